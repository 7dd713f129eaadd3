"""The GCP verifier against a local OAuth token endpoint.

The endpoint is a real HTTP server on 127.0.0.1 that checks the JWT assertion's RS256
signature with the public half of a real RSA key, as Google's does; google-auth and
requests run unmodified.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import sys
import time
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import SecretStr

from cloudcred import boundary, verification
from cloudcred.api.credential import CloudCredentialSpec
from cloudcred.cache.boundaries import boundary_info
from cloudcred.config import Settings
from cloudcred.installation import Installation
from cloudcred.providers import gcp
from cloudcred.providers.base import (
    ProviderSettings,
    Reason,
    Verification,
    VerificationError,
    VerifyContext,
)
from tests.gcp import (
    EMAIL,
    OTHER_PEM,
    SERVER_KEY,
    SERVER_PEM,
    TokenEndpoint,
    key_json,
    pem,
    start_token_endpoint,
)

TIMEOUT = 2.0


@pytest.fixture
def endpoint_factory() -> Iterator[Any]:
    servers: list[ThreadingHTTPServer] = []

    def start() -> TokenEndpoint:
        endpoint, server = start_token_endpoint([SERVER_KEY.public_key()])
        servers.append(server)
        return endpoint

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def endpoint(endpoint_factory: Any) -> TokenEndpoint:
    started: TokenEndpoint = endpoint_factory()
    return started


@pytest.fixture
def silent_url() -> Iterator[str]:
    """A port that accepts connections (the kernel completes the handshake into the
    backlog) and never answers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/token"
    finally:
        sock.close()


@pytest.fixture
def closed_url() -> str:
    """A port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/token"


def key_spec() -> CloudCredentialSpec:
    return CloudCredentialSpec.model_validate(
        {
            "provider": "GCP",
            "gcp": {"serviceAccountKeyRef": {"name": "gcp-key", "key": "key.json"}},
        }
    )


def wif_spec() -> CloudCredentialSpec:
    return CloudCredentialSpec.model_validate(
        {
            "provider": "GCP",
            "gcp": {
                "serviceAccountEmail": EMAIL,
                "workloadIdentityProvider": "projects/123456789/locations/global/"
                "workloadIdentityPools/my-pool/providers/my-provider",
            },
        }
    )


def context(token_uri: str, timeout: float = TIMEOUT) -> VerifyContext:
    return VerifyContext(
        namespace="ns",
        name="cred",
        settings=ProviderSettings(gcp_token_uri=token_uri, timeout_seconds=timeout),
    )


def run(text: str, token_uri: str, timeout: float = TIMEOUT) -> Verification:
    return gcp.verify(
        key_spec(), {"serviceAccountKey": SecretStr(text)}, context(token_uri, timeout)
    )


def _pem_body_lines(pem: str) -> list[str]:
    return [line for line in pem.splitlines() if line and not line.startswith("-----")]


def refused(text: str, token_uri: str, timeout: float = TIMEOUT) -> VerificationError:
    """The error verify raises, after checking it leaks nothing of the key."""
    with pytest.raises(VerificationError) as caught:
        run(text, token_uri, timeout)
    error = caught.value
    for shown in (error.message, str(error), repr(error)):
        assert text not in shown
        for private in (SERVER_PEM, OTHER_PEM):
            assert "PRIVATE KEY" not in shown
            for line in _pem_body_lines(private):
                assert line not in shown
        assert "ya29" not in shown
    # No chained exception carries the key (or a response body) into a traceback.
    assert error.__cause__ is None
    assert error.__context__ is None or error.__suppress_context__
    return error


# --- public_id and secret_refs ---------------------------------------------------------


def test_public_id_and_secret_refs_for_a_key() -> None:
    spec = key_spec()
    assert gcp.public_id(spec) == ""
    refs = gcp.secret_refs(spec)
    assert list(refs) == ["serviceAccountKey"]
    assert (refs["serviceAccountKey"].name, refs["serviceAccountKey"].key) == (
        "gcp-key",
        "key.json",
    )


def test_public_id_and_secret_refs_for_workload_identity() -> None:
    spec = wif_spec()
    assert gcp.public_id(spec) == EMAIL
    assert gcp.secret_refs(spec) == {}


# --- a key that works --------------------------------------------------------------------


def test_a_valid_key_is_verified_as_its_client_email(endpoint: TokenEndpoint) -> None:
    result = run(key_json(endpoint.url), endpoint.url)

    assert result.identity == EMAIL
    assert result.static_keys is True
    assert len(endpoint.requests) == 1
    claims = endpoint.requests[0]["claims"]
    assert claims["iss"] == EMAIL
    assert claims["scope"] == "https://www.googleapis.com/auth/cloud-platform"


def test_the_key_goes_to_the_configured_endpoint_even_with_a_trailing_slash(
    endpoint: TokenEndpoint,
) -> None:
    assert run(key_json(endpoint.url + "/"), endpoint.url).identity == EMAIL


def test_another_universe_domain_does_not_skip_the_token_endpoint(
    endpoint: TokenEndpoint,
) -> None:
    # With a non-default universe_domain google-auth would sign its own JWT and never
    # call the endpoint; a key the endpoint does not know must still be refused.
    text = key_json(endpoint.url, private_key=OTHER_PEM, universe_domain="example.com")
    assert refused(text, endpoint.url).reason == Reason.INVALID_CREDENTIALS
    assert len(endpoint.requests) == 1


# --- keys the endpoint refuses -----------------------------------------------------------


def test_a_key_the_endpoint_does_not_know_is_invalid_credentials(
    endpoint: TokenEndpoint,
) -> None:
    error = refused(key_json(endpoint.url, private_key=OTHER_PEM), endpoint.url)

    assert error.reason == Reason.INVALID_CREDENTIALS
    assert "invalid_grant" in error.message
    assert "HTTP 400" in error.message
    assert len(endpoint.requests) == 1
    assert endpoint.requests[0]["claims"] is None  # the server did check the signature


@pytest.mark.parametrize(
    ("status", "body", "reason"),
    [
        (
            400,
            {"error": "invalid_grant", "error_description": "Invalid JWT Signature."},
            Reason.INVALID_CREDENTIALS,
        ),
        (401, {"error": "invalid_client"}, Reason.INVALID_CREDENTIALS),
        (403, {"error": "access_denied"}, Reason.ACCESS_DENIED),
        (404, {"error": "not_found"}, Reason.PROVIDER_REFUSED),  # will refuse again
        (429, {"error": "rate_limit"}, Reason.PROVIDER_UNREACHABLE),
        (200, {"token_type": "Bearer"}, Reason.PROVIDER_UNREACHABLE),
    ],
)
def test_token_endpoint_answers_map_to_reasons(
    endpoint: TokenEndpoint, status: int, body: dict[str, Any], reason: Reason
) -> None:
    endpoint.forced = (status, body)
    error = refused(key_json(endpoint.url), endpoint.url)
    assert error.reason == reason
    if status != 200:
        assert f"HTTP {status}" in error.message


def test_the_error_description_is_never_echoed(endpoint: TokenEndpoint) -> None:
    endpoint.forced = (
        400,
        {"error": "invalid_grant", "error_description": "echo: s3cr3t-from-the-body"},
    )
    error = refused(key_json(endpoint.url), endpoint.url)
    assert error.reason == Reason.INVALID_CREDENTIALS
    assert "s3cr3t" not in error.message


def test_a_known_description_becomes_a_hint(endpoint: TokenEndpoint) -> None:
    endpoint.forced = (
        400,
        {"error": "invalid_grant", "error_description": "Invalid JWT Signature."},
    )
    error = refused(key_json(endpoint.url), endpoint.url)
    assert "deleted or disabled" in error.message


@pytest.mark.parametrize("status", [500, 503, 429])
def test_a_failing_endpoint_is_unreachable_at_once(endpoint: TokenEndpoint, status: int) -> None:
    # google-auth would retry these with sleeps of seconds; the operator retries instead.
    endpoint.forced = (status, {"error": "server_error"})
    started = time.monotonic()
    error = refused(key_json(endpoint.url), endpoint.url)
    assert error.reason == Reason.PROVIDER_UNREACHABLE
    assert f"HTTP {status}" in error.message
    assert len(endpoint.requests) == 1
    assert time.monotonic() - started < 1


# --- malformed keys ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make_text", "expected"),
    [
        (lambda url: "not json at all " + SERVER_PEM, "not valid JSON"),
        (lambda url: json.dumps(["a", SERVER_PEM]), "not a JSON object"),
        (lambda url: key_json(url, type="authorized_user"), '"authorized_user" credential'),
        (lambda url: key_json(url, type=None), 'type "service_account"'),
        (lambda url: key_json(url, client_email=None), "has no client_email"),
        (lambda url: key_json(url, client_email=""), "has no client_email"),
        (lambda url: key_json(url, client_email=42), "has no client_email"),
        (lambda url: key_json(url, client_email="nobody"), "not an e-mail address"),
        (lambda url: key_json(url, private_key=None), "has no private_key"),
        (lambda url: key_json(None), "has no token_uri"),
        (lambda url: key_json(url, private_key="-----BEGIN PRIVATE KEY-----\nAAAA\n"), "RSA"),
        (lambda url: key_json(url, private_key=SERVER_PEM[:200]), "private_key"),
        (
            lambda url: key_json(url, private_key=pem(ec.generate_private_key(ec.SECP256R1()))),
            "RSA",
        ),
    ],
    ids=[
        "not-json",
        "json-array",
        "user-credentials",
        "no-type",
        "no-client-email",
        "empty-client-email",
        "numeric-client-email",
        "client-email-not-an-address",
        "no-private-key",
        "no-token-uri",
        "garbage-pem",
        "truncated-pem",
        "ec-key",
    ],
)
def test_malformed_keys_are_invalid_secret_data(
    endpoint: TokenEndpoint, make_text: Any, expected: str
) -> None:
    error = refused(make_text(endpoint.url), endpoint.url)

    assert error.reason == Reason.INVALID_SECRET_DATA
    assert expected in error.message
    assert endpoint.requests == []


# --- the key's token_uri is never followed -----------------------------------------------


def test_a_token_uri_pointing_at_the_metadata_server_is_refused(endpoint: TokenEndpoint) -> None:
    error = refused(key_json("http://169.254.169.254/computeMetadata/v1/"), endpoint.url)

    assert error.reason == Reason.INVALID_SECRET_DATA
    assert "token_uri" in error.message
    assert "169.254.169.254" in error.message
    assert endpoint.url.removesuffix("/token") in error.message
    assert endpoint.requests == []


def test_a_token_uri_pointing_at_another_server_never_reaches_it(endpoint_factory: Any) -> None:
    configured: TokenEndpoint = endpoint_factory()
    elsewhere: TokenEndpoint = endpoint_factory()

    error = refused(key_json(elsewhere.url), configured.url)

    assert error.reason == Reason.INVALID_SECRET_DATA
    assert elsewhere.requests == []
    assert configured.requests == []


def test_only_the_host_of_a_foreign_token_uri_is_shown(endpoint: TokenEndpoint) -> None:
    error = refused(
        key_json("https://user:hunter2@evil.example/steal?x=secret-query"), endpoint.url
    )
    assert "evil.example" in error.message
    assert "hunter2" not in error.message
    assert "secret-query" not in error.message


def test_google_token_endpoints_are_interchangeable() -> None:
    legacy = "https://accounts.google.com/o/oauth2/token"
    current = "https://oauth2.googleapis.com/token"
    assert gcp._same_endpoint(legacy, current)
    assert gcp._same_endpoint(current, current + "/")
    assert not gcp._same_endpoint(legacy, "http://127.0.0.1:8080/token")
    assert not gcp._same_endpoint("http://169.254.169.254/token", current)


# --- an endpoint that cannot be reached --------------------------------------------------


def test_an_endpoint_that_never_answers_is_unreachable_within_the_timeout(
    silent_url: str,
) -> None:
    started = time.monotonic()
    error = refused(key_json(silent_url), silent_url)
    elapsed = time.monotonic() - started

    assert error.reason == Reason.PROVIDER_UNREACHABLE
    assert "no answer" in error.message
    assert elapsed < TIMEOUT + 3


def test_a_closed_port_is_unreachable(closed_url: str) -> None:
    error = refused(key_json(closed_url), closed_url)

    assert error.reason == Reason.PROVIDER_UNREACHABLE
    assert "could not connect" in error.message


# --- what cannot be checked here ---------------------------------------------------------


def test_workload_identity_is_checked_for_shape_only() -> None:
    with pytest.raises(VerificationError) as caught:
        gcp.verify(wif_spec(), {}, context("http://127.0.0.1:9/token"))
    assert caught.value.reason == Reason.VERIFICATION_UNAVAILABLE
    assert "workload identity" in caught.value.message


def test_without_google_auth_verification_is_unavailable(
    endpoint: TokenEndpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A None entry in sys.modules makes the import fail as if the package were missing.
    for name in [n for n in sys.modules if n == "google.auth" or n.startswith("google.auth.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "google.auth", None)
    monkeypatch.setitem(sys.modules, "google.oauth2", None)

    error = refused(key_json(endpoint.url), endpoint.url)

    assert error.reason == Reason.VERIFICATION_UNAVAILABLE
    assert "cloudcred[gcp]" in error.message
    assert endpoint.requests == []


def test_a_missing_secret_value_is_reported() -> None:
    with pytest.raises(VerificationError) as caught:
        gcp.verify(key_spec(), {}, context("http://127.0.0.1:9/token"))
    assert caught.value.reason == Reason.SECRET_KEY_MISSING


# --- boundaries: the project is the service account's, not the key file's project_id -----


class KeySecret:
    """The one call check_credential makes to the API server for a key credential."""

    def __init__(self, text: str) -> None:
        self.data = {"key.json": base64.b64encode(text.encode()).decode()}

    async def read_secret_data(self, namespace: str, name: str) -> dict[str, str]:
        return self.data


def checked_within(text: str, endpoint: TokenEndpoint, projects: list[str]) -> dict[str, Any]:
    """The Verified condition of a key credential in a namespace whose boundary allows
    ``projects``."""
    rules = boundary_info(
        {
            "metadata": {"name": "team-a"},
            "spec": {"namespaceSelector": {}, "gcp": {"projects": projects}},
        }
    )
    body = {
        "metadata": {"namespace": "ns", "name": "cred", "generation": 1},
        "spec": {
            "provider": "GCP",
            "gcp": {"serviceAccountKeyRef": {"name": "gcp-key", "key": "key.json"}},
        },
    }

    def within(spec: Any, account: str | None, project: str | None) -> str | None:
        return boundary.violation(spec, "ns", {}, [rules], account, project)

    result = asyncio.run(verification.check_credential(
        body, KeySecret(text), Settings(gcp_token_uri=endpoint.url),  # type: ignore[arg-type]
        asyncio.Semaphore(1), None, Installation(bytes(32)), within,
    ))  # fmt: skip
    return result.verified


def test_a_key_edited_to_claim_an_allowed_project_stays_outside(endpoint: TokenEndpoint) -> None:
    """Google authenticates the key's client_email and private key; project_id is free
    text. A key of a service account of another project, its project_id edited to the
    allowed one, is outside the boundary and never sent to the token endpoint; a key of
    the allowed project's service account passes whatever its project_id says."""
    edited = key_json(endpoint.url, client_email="deployer@other-proj.iam.gserviceaccount.com",
                      project_id="acme-prod")  # fmt: skip
    verified = checked_within(edited, endpoint, ["acme-prod"])
    assert (verified["status"], verified["reason"]) == ("False", "OutsideBoundary")
    assert "deployer@other-proj.iam.gserviceaccount.com" in verified["message"]
    assert "of project other-proj, which is not allowed" in verified["message"]
    assert endpoint.requests == []

    genuine = key_json(endpoint.url, client_email="deployer@acme-prod.iam.gserviceaccount.com",
                       project_id="anything")  # fmt: skip
    verified = checked_within(genuine, endpoint, ["acme-prod"])
    assert (verified["status"], verified["reason"]) == ("True", "Verified")
    assert endpoint.requests
    assert {r["claims"]["iss"] for r in endpoint.requests} == {
        "deployer@acme-prod.iam.gserviceaccount.com"
    }


def test_a_key_of_a_default_service_account_is_outside_any_list_of_projects(
    endpoint: TokenEndpoint,
) -> None:
    """An App Engine default account (PROJECT@appspot.gserviceaccount.com) does not say
    its project in the form boundaries read: refused where projects are listed."""
    key = key_json(endpoint.url, client_email="acme-prod@appspot.gserviceaccount.com",
                   project_id="acme-prod")  # fmt: skip
    verified = checked_within(key, endpoint, ["acme-prod"])
    assert verified["reason"] == "OutsideBoundary"
    assert endpoint.requests == []
