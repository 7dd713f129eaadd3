"""The installed dependencies agree with each other.

kubernetes 37 needs python-dateutil >= 3 while botocore needs < 3; left unpinned, pip
"resolves" the clash by installing boto3 0.0.3, which imports fine and fails later.
"""

from importlib.metadata import version

from packaging.version import Version


def test_boto3_is_a_modern_release() -> None:
    import boto3

    assert Version(boto3.__version__) >= Version("1.34")
    assert Version(version("botocore")) >= Version("1.34")


def test_kubernetes_client_and_dateutil_agree_with_botocore() -> None:
    assert Version(version("kubernetes")) < Version("37")
    assert Version(version("python-dateutil")) < Version("3")


def test_kopf_is_recent_enough_not_to_post_logs_as_events() -> None:
    assert Version(version("kopf")) >= Version("1.44")
