# Sourced by scripts/test: the Debian programs some tests talk to as real peers (systemd-analyze
# for the unit, smtp-sink from Postfix, nmap's relay probe, headless Chromium for the console,
# swaks). Installs the missing ones with apt-get when running as root on Debian; otherwise it
# says which are missing and the tests that need them fail naming the package (never a skip).
debian_tools_ensure() {
  local -a missing=()
  local pair program package
  for pair in systemd-analyze:systemd smtp-sink:postfix nmap:nmap chromium:chromium swaks:swaks; do
    program="${pair%%:*}"; package="${pair##*:}"
    command -v "$program" >/dev/null 2>&1 || [ -x "/usr/sbin/$program" ] || missing+=("$package")
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "missing Debian packages (tests that need them will fail): ${missing[*]}" >&2
    return 0
  fi
  echo "installing Debian packages the tests use: ${missing[*]}" >&2
  # "No configuration": Postfix is only wanted for smtp-sink/smtp-source; nothing is started.
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections 2>/dev/null || true
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null 2>&1 ||
    { apt-get update -q >/dev/null 2>&1 &&
      apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null 2>&1; } ||
    echo "apt-get could not install: ${missing[*]}" >&2
}
