"""`mailnode doctor`: are this server's DNS records, certificate and hostname right for sending?

`diagnose` runs the checks (the CLI and the web console call it); `render_text` and
`DoctorReport.to_json` show the result.
"""

from mailnode.doctor.diagnose import diagnose
from mailnode.doctor.report import SERVER, Check, DoctorReport, Record, Status, render_text

__all__ = ["SERVER", "Check", "DoctorReport", "Record", "Status", "diagnose", "render_text"]
