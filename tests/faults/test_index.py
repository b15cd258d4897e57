"""Every fault mailnode is proven against, and the test that proves it.

Crash (scripts/chaos; `scripts/chaos --duration 60` for the long run):
  SIGKILL every few seconds under SMTP load: nothing accepted is lost, duplicates bounded
      tests/faults/test_chaos.py::test_sigkill_under_load_loses_no_accepted_message
  SIGKILL with deliveries in flight and queued, or right after a store & forward 250
      tests/delivery/test_crash_recovery.py::test_sigkill_with_pending_deliveries_loses_nothing
      tests/delivery/test_crash_recovery.py::test_sigkill_right_after_a_store_and_forward_250_loses_nothing

Upstream (the receiving server, or DNS):
  connection refused: 4.4.1, retried, delivered once the host listens
      tests/faults/test_upstream_faults.py::test_connection_refused_is_retried_until_the_host_listens
      tests/delivery/test_mx_delivery.py::test_first_mx_refuses_second_receives
  greeting 421: relayed into the attempt, retried
      tests/faults/test_upstream_faults.py::test_greeting_421_is_retried
  MAIL 4xx / 5xx: submission 250 and retried / the same 5xx, no DSN
      tests/faults/test_upstream_faults.py::test_mail_refused
  RCPT 4xx: submission 250 and retried, ingress the same 4xx; retries exhausted: DSN
      tests/exploder/test_exploder_runtime.py::test_rcpt_4xx
      tests/delivery/test_rest_delivery.py::test_exhausted_retries_end_the_delivery_and_bounce
  RCPT 5xx: the same 5xx to an SMTP client; a REST delivery bounces
      tests/exploder/test_exploder_runtime.py::test_rcpt_5xx_passes_through_and_nothing_follows
      tests/delivery/test_rest_delivery.py::test_permanent_failure_bounces_to_the_sender
  DATA 4xx / 5xx (and a mix of recipients)
      tests/exploder/test_exploder_runtime.py::test_data_answers
      tests/exploder/test_exploder_runtime.py::test_mixed_data_answers_get_250_and_a_dsn_for_the_failure
      tests/delivery/test_rest_delivery.py::test_temporary_failures_are_retried_until_delivered
  connection dropped in the middle of the message: 4.4.2, retried
      tests/faults/test_upstream_faults.py::test_connection_dropped_mid_data_is_retried
  reply never comes (timeouts): greeting, RCPT, DATA
      tests/faults/test_upstream_faults.py::test_greeting_that_never_comes_times_out_and_is_retried
      tests/exploder/test_exploder_runtime.py::test_submission_rcpt_timeout_is_accepted_and_delivered_later
      tests/exploder/test_exploder_runtime.py::test_ingress_rcpt_timeout_is_450_and_nothing_is_kept
      tests/exploder/test_exploder_runtime.py::test_data_answers
      tests/smtp/test_smtp_client.py::test_data_hang_times_out_and_closes
  TLS handshake failure after STARTTLS: opportunistic falls back to plaintext, required defers
      tests/faults/test_upstream_faults.py::test_tls_handshake_failure_falls_back_to_plaintext_when_opportunistic
      tests/faults/test_upstream_faults.py::test_tls_handshake_failure_defers_when_tls_is_required
      tests/smtp/test_smtp_client.py::test_unverifiable_certificate
  DNS SERVFAIL: retried until the retries run out
      tests/delivery/test_mx_delivery.py::test_servfail_is_retried
  NXDOMAIN, null MX (RFC 7505): bounced at once, one attempt
      tests/faults/test_upstream_faults.py::test_a_domain_that_takes_no_mail_bounces_at_once
      tests/delivery/test_mx_delivery.py::test_null_mx_fails_permanently
  MX host with no address: retried until it has one
      tests/faults/test_upstream_faults.py::test_mx_host_without_an_address_is_retried_until_it_has_one

Storage (the database under the running service):
  read-only database: SMTP 451, REST 503 + Retry-After, recovers by itself
      tests/faults/test_storage_faults.py::test_read_only_database_is_451_and_503_then_recovers
  disk full during DATA: the same, and the delivery started at RCPT is cancelled
      tests/faults/test_storage_faults.py::test_disk_full_during_data_is_451_and_503_then_recovers
  a failed write among a group commit fails only its own caller
      tests/storage/test_store.py::test_writes_queued_together_fail_only_their_own_callers
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = re.compile(r"^\s+(tests/\S+\.py)::(\w+)$", re.MULTILINE)


def test_every_test_the_index_names_exists() -> None:
    references = REFERENCE.findall(__doc__ or "")
    assert len(references) >= 30
    missing = []
    for path, name in references:
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        if not callable(getattr(module, name, None)):
            missing.append(f"{path}::{name}")
    assert missing == [], "the index names tests that do not exist"
