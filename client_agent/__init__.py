"""The on-prem client agent: poll the client's queue, train on local data, upload the update, report."""
