"""`fedstep.aws.boto.new_session`: every principal gets a session of its own, and the service models are parsed
once per process, not once per session (the local cloud makes a session for each Step Functions task)."""

from __future__ import annotations

import botocore.loaders

from fedstep.aws import boto


def test_a_second_sessions_client_parses_no_service_model_again(monkeypatch):
    boto.client("dynamodb", boto.new_session(region_name="us-east-1"), "http://127.0.0.1:9")  # warms the loader
    loaded: list[str] = []
    original = botocore.loaders.JSONFileLoader.load_file

    def counting(self, file_path):
        loaded.append(file_path)
        return original(self, file_path)

    monkeypatch.setattr(botocore.loaders.JSONFileLoader, "load_file", counting)
    boto.client("dynamodb", boto.new_session(region_name="us-east-1"), "http://127.0.0.1:9")
    assert loaded == []


def test_sessions_share_the_models_but_never_the_credentials():
    alice = boto.new_session(aws_access_key_id="AKIDALICE", aws_secret_access_key="a", region_name="us-east-1")
    bob = boto.new_session(aws_access_key_id="AKIDBOB", aws_secret_access_key="b", region_name="eu-west-1")
    assert alice.get_credentials().access_key == "AKIDALICE" and bob.get_credentials().access_key == "AKIDBOB"
    assert (alice.region_name, bob.region_name) == ("us-east-1", "eu-west-1")
    assert alice._session.get_component("data_loader") is bob._session.get_component("data_loader")


def test_the_shared_loader_does_not_grow_with_the_sessions_a_process_makes():
    """boto3 adds its data folder to a session's loader each time: a warm Lambda or the local cloud's
    Step Functions, making a session per invocation, must not grow the shared loader's paths."""
    boto.new_session()
    paths = list(boto.new_session()._session.get_component("data_loader").search_paths)
    for _ in range(200):
        boto.new_session(region_name="us-east-1")
    assert boto.new_session()._session.get_component("data_loader").search_paths == paths
    assert len(paths) == len(set(paths))
