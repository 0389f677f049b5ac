"""What the schemathesis runs (in process and against a live server) leave out, and why."""

from __future__ import annotations

# Checks that cannot hold for an operation, by schemathesis's names (the live run in
# tests/e2e/test_fuzz_live.py leaves out the same). Every other check, rejecting invalid data
# included, runs on every operation.
EXCLUDED_CHECKS = {
    # A job spec has rules JSON Schema cannot state (the last layer has 10 units, at most 20 M
    # parameters, momentum only for the momentum optimizer), and so has an upload (its bytes
    # are a PNG or JPEG that shows ink): schema-valid input that breaks them is rightly
    # refused with a 422 naming the rule, so "valid data is accepted" cannot hold there.
    "POST /jobs": ["positive_data_acceptance"],
    "POST /jobs/{job_id}/predict": ["positive_data_acceptance"],
    # A dataset's bytes must be an .npz, a CSV or a zip of images that hold a dataset.
    "POST /datasets": ["positive_data_acceptance"],
    # A study's space names paths into the job spec, each checked against that spec's rules.
    "POST /studies": ["positive_data_acceptance"],
    # A key's quotas are whole numbers written as such: `2.0` is refused as everywhere in
    # this API, though JSON Schema counts it an integer.
    "POST /keys": ["positive_data_acceptance"],
    # No worker runs here, so readiness is a 503 (as it declares), which is the point of it.
    "GET /readyz": ["not_a_server_error"],
}
