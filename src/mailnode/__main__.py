from mailnode.cli import main

main()
