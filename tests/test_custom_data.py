"""`fedstep local --dataset module:function`: a user's whole data set, checked, held out and partitioned
like the built-in ones; and the label counts a simulated run records (partition.json) and reports."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from botocore.exceptions import ClientError

from client_agent.data import load_local_data, load_whole_data
from client_agent.partitions import parse_scheme
from fedstep.aws.stack import StackOutputs
from fedstep.core import keys
from fedstep.core.errors import FedstepError
from fedstep.core.label_counts import LabelCounts
from fedstep.local.demo import DemoConfig, check_data_args, partition_data
from fedstep.operator.views import load_partition

REPO = Path(__file__).resolve().parent.parent
MODULE = "fedstep_test_site_data"  # a name no other test uses: modules are cached by name
CLIENTS = ["client-1", "client-2", "client-3"]

LOADERS = """
import numpy as np

def _data(n=400):
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, n)
    return rng.normal(size=(n, 5)).astype("float32") + y[:, None], y

def good():
    return _data()

def as_lists():
    x, y = _data(60)
    return x.tolist(), y.reshape(-1, 1).tolist()

def raising():
    raise FileNotFoundError("/data/cohort.parquet")

def not_a_pair():
    return _data()[0]

def pair_of_pairs():
    x, y = _data()
    return (x[:300], y[:300]), (x[300:], y[300:])

def flat_x():
    x, y = _data()
    return x[:, 0], y

def text_x():
    x, y = _data()
    return x.astype(str), y

def ragged_x():
    return [[1.0, 2.0], [3.0]] * 10, list(range(20))

def float_y():
    x, y = _data()
    return x, y + 0.5

def text_y():
    x, y = _data()
    return x, np.array(["healthy", "ill", "unknown", "ill"])[y]

def negative_y():
    x, y = _data()
    return x, y - 1

def short_y():
    x, y = _data()
    return x, y[:-3]

def with_nan():
    x, y = _data()
    x[7, 2] = np.nan
    x[9, 0] = np.inf
    return x, y

def tiny():
    x, y = _data()
    return x[:4], y[:4]

SITES = np.array(["south", "north", "east"])

def by_site():  # (x, y, groups): the site of each example, here tied to its label
    x, y = _data()
    return x, y, SITES[np.minimum(y, 2)]

def site_splits():  # every site's own ((x_train, y_train), (x_test, y_test)), in the order listed
    x, y = _data(300)
    cuts = {"north": (0, 80, 100), "east": (100, 220, 250), "south": (250, 290, 300)}
    return {s: ((x[a:b], y[a:b]), (x[b:c], y[b:c])) for s, (a, b, c) in cuts.items()}

def groups_too_short():
    x, y = _data()
    return x, y, np.zeros(10, int)

def float_groups():
    x, y = _data()
    return x, y, np.zeros(400)

def tiny_site():
    x, y = _data()
    groups = np.zeros(400, int)
    groups[:1] = 7
    return x, y, groups

def pair_site():
    x, y = _data()
    groups = np.zeros(400, int)
    groups[:2] = 7
    return x, y, groups

def bad_site():
    return {"north": (1, 2, 3)}

def one_hot_loss():
    # the issue's model: compiled for one-hot labels, given class indices
    from client_agent.models import mlp

    model = mlp(64, 10)
    model.compile(optimizer="sgd", loss="categorical_crossentropy", metrics=["accuracy"])
    return model
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("site")
    (folder / f"{MODULE}.py").write_text(LOADERS)
    sys.path.insert(0, str(folder))
    yield folder
    sys.path.remove(str(folder))
    sys.modules.pop(MODULE, None)


def test_a_good_loader_gives_float32_examples_and_int64_labels(site):
    x, y = load_whole_data(f"{MODULE}:good")
    assert x.shape == (400, 5) and x.dtype == np.float32 and x.flags.c_contiguous
    assert y.shape == (400,) and y.dtype == np.int64
    x, y = load_whole_data(f"{MODULE}:as_lists")  # plain lists, y as a column, are fine
    assert x.shape == (60, 5) and y.shape == (60,)


@pytest.mark.parametrize(
    ("loader", "message"),
    [
        ("nowhere_at_all:load", "data loader 'nowhere_at_all:load': cannot import module 'nowhere_at_all'"),
        (f"{MODULE}:missing", f"module '{MODULE}' has no 'missing'"),
        (f"{MODULE}:raising", "raised FileNotFoundError: /data/cohort.parquet"),
        (f"{MODULE}:not_a_pair", "must return (x, y), the whole data set as numpy arrays; got ndarray of shape"),
        (f"{MODULE}:pair_of_pairs", "returned a pair of pairs"),
        (f"{MODULE}:flat_x", "x must have one row per example, shape (n, features...); got shape (400,)"),
        (f"{MODULE}:text_x", "x must hold real numbers, got dtype <U"),
        (f"{MODULE}:ragged_x", "x is not an array"),
        (f"{MODULE}:float_y", "got dtype float64 (return y.astype(int) if they are whole numbers)"),
        (f"{MODULE}:text_y", "got dtype <U7 (number the classes: return np.unique(y, return_inverse=True)[1])"),
        (f"{MODULE}:negative_y", "y must be class labels 0, 1, ..., but has -1"),
        (f"{MODULE}:short_y", "x has 400 examples but y has 397"),
        (f"{MODULE}:with_nan", "non-finite values (NaN or Inf) in 2 example(s), the first at row 7"),
        (f"{MODULE}:tiny", "4 examples; a simulation needs at least 10"),
    ],
)
def test_each_bad_loader_gets_one_clear_error(site, loader, message):
    with pytest.raises(FedstepError) as raised:
        load_whole_data(loader)
    assert message in str(raised.value)
    assert str(raised.value).startswith("data loader ")


def test_the_operator_holds_out_20_percent_and_partitions_the_rest(site):
    prepared, counts = partition_data(f"{MODULE}:good", CLIENTS, parse_scheme("dirichlet:0.5"), seed=3)
    assert len(prepared.heldout) == 80 and len(prepared.pool) == 320
    assert not set(prepared.heldout) & set(prepared.pool)
    assert counts.labels == (0, 1, 2, 3) and list(counts.clients) == CLIENTS
    assert sum(counts.total(c) for c in CLIENTS) == 320
    assert (counts.dataset, counts.scheme, counts.seed) == (f"{MODULE}:good", "dirichlet:0.5", 3)


@pytest.mark.parametrize("scheme", ["iid", "dirichlet:0.5", "shards:2", "quantity:1"])
def test_each_client_computes_the_same_part_the_operator_counted(site, scheme):
    _, counts = partition_data(f"{MODULE}:good", CLIENTS, parse_scheme(scheme), seed=3)
    seen: list[bytes] = []
    for i, client in enumerate(CLIENTS, start=1):
        (x_train, y_train), (x_test, y_test) = load_local_data(f"{MODULE}:good", f"{i}/3", scheme, seed=3)
        assert len(y_test) == pytest.approx(0.2 * (len(y_train) + len(y_test)), abs=1)  # local 80/20
        y = np.concatenate([y_train, y_test])
        assert np.bincount(y, minlength=4).tolist() == list(counts.clients[client])
        seen += [row.tobytes() for row in np.concatenate([x_train, x_test])]
    assert len(seen) == len(set(seen)) == 320  # disjoint, and together the whole pool


def test_a_bad_loader_stops_the_client_too(site):
    with pytest.raises(FedstepError, match="raised FileNotFoundError"):
        load_local_data(f"{MODULE}:raising", "1/3")


def test_without_a_partition_a_loader_still_returns_the_clients_own_split(site):
    with pytest.raises(FedstepError, match=r"must return \(\(x_train, y_train\), \(x_test, y_test\)\)"):
        load_local_data(f"{MODULE}:good")


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (DemoConfig(dataset=f"{MODULE}:good"), "is your own data, which has no default model: pass --model"),
        (DemoConfig(dataset="cifar"), "available: digits, heart, heart-raw, mnist, or your own"),
        (DemoConfig(partition="dirichlet:-1"), "--partition: partition scheme 'dirichlet:-1': ALPHA must be"),
        (DemoConfig(dataset="heart", clients=4, partition="shards:2"), "heart data set keeps its natural split"),
        (DemoConfig(dataset="heart-raw", clients=4, partition="dirichlet:1"), "heart-raw data set keeps its natural"),
        (DemoConfig(dataset="heart-raw", clients=3), "the heart-raw data set has 4 hospitals: use --clients 4"),
        (DemoConfig(seed=-1), "--seed must be 0 to 4294967295, got -1"),
    ],
)
def test_local_refuses_bad_data_arguments_before_starting_anything(config, message):
    with pytest.raises(FedstepError) as raised:
        check_data_args(config)
    assert message in str(raised.value)


def test_a_model_that_does_not_fit_the_data_is_refused(site):
    from client_agent.models import mlp
    from fedstep.local.demo import check_model_fits

    prepared, _ = partition_data(f"{MODULE}:good", CLIENTS, parse_scheme("iid"), seed=0)
    check_model_fits(mlp(5, 4), "site:model", prepared)
    with pytest.raises(FedstepError, match=r"takes inputs of shape \(64,\), but the examples of .* have shape \(5,\)"):
        check_model_fits(mlp(64, 4), "site:model", prepared)
    with pytest.raises(FedstepError, match=r"has 3 outputs, but the labels of .* go up to 3: it needs at least 4"):
        check_model_fits(mlp(5, 3), "site:model", prepared)


def test_a_model_whose_loss_does_not_read_the_labels_is_refused_before_the_run(site):
    """The pre-run model check is the clients' own (`fedstep-client check`'s model fit): the loss
    against the labels, then one training batch, on the model as the agents load it."""
    from client_agent.models import mlp
    from fedstep.local.demo import check_model_trains
    from fedstep.operator.model import keras_payload

    prepared, _ = partition_data(f"{MODULE}:good", CLIENTS, parse_scheme("iid"), seed=0)
    check_model_trains(keras_payload(mlp(5, 4))[0], "site:model", prepared)  # a model that fits trains
    wrong = mlp(5, 4)
    wrong.compile(optimizer="sgd", loss="categorical_crossentropy")
    with pytest.raises(FedstepError) as raised:
        check_model_trains(keras_payload(wrong)[0], "site:wrong", prepared)
    message = str(raised.value)
    assert message.startswith(f"model site:wrong cannot train on data set {MODULE}:good: y_train holds class indices")
    assert "expects one-hot labels of shape (n, 4)" in message and "sparse_categorical_crossentropy" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--model", f"{MODULE}:one_hot_loss"],  # digits' class indices under categorical_crossentropy
            f"model {MODULE}:one_hot_loss cannot train on data set digits: y_train holds class indices",
        ),
        (["--dataset", f"{MODULE}:raising", "--model", "client_agent.models:digits_mlp"], "raised FileNotFoundError"),
        (["--dataset", f"{MODULE}:good"], "pass --model module:function"),
        (["--partition", "shards:0"], "K (shards per client) must be a whole number of at least 1"),
    ],
)
def test_fedstep_local_prints_one_clear_error_and_no_traceback(site, tmp_path, args, message):
    result = subprocess.run(
        [sys.executable, "-m", "fedstep", "local", "--out", str(tmp_path / "out"), *args],
        cwd=site,  # the user's module is found in the working directory, as with `python -m`
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert "starting the local cloud" not in result.stdout


# --- partition.json ------------------------------------------------------------------------------


def counts() -> LabelCounts:
    return LabelCounts.of("digits", "dirichlet:0.1", 0, range(3), {"client-1": [8, 2, 0], "client-2": [0, 1, 9]})


def test_label_counts_round_trip_through_json_and_describe_each_client():
    again = LabelCounts.parse(json.loads(json.dumps(counts().to_json())))
    assert again == counts()
    assert again.describe("client-1") == "10 examples, 2 labels; top 0 80%, 1 20%"
    assert again.top("client-2", 1) == [(2, 9)]


@pytest.mark.parametrize(
    "change",
    [
        {"kind": "round"},
        {"labels": [0, 0, 1]},
        {"clients": {"client-1": [1, 2]}},
        {"clients": {"client-1": [1, -2, 3]}},
        {"clients": {"bad id!": [1, 2, 3]}},
        {"seed": "0"},
    ],
)
def test_malformed_label_counts_are_refused(change):
    with pytest.raises(ValueError):
        LabelCounts.parse({**counts().to_json(), **change})


class FakeS3:
    def __init__(self, objects: dict[str, bytes]) -> None:
        self.objects = objects

    def get_object(self, Bucket: str, Key: str) -> dict:
        if Key not in self.objects:
            raise ClientError({"Error": {"Code": "NoSuchKey", "Message": "no"}}, "GetObject")
        return {"Body": io.BytesIO(self.objects[Key])}


OUTPUTS = StackOutputs("bucket", "table", "arn:topic", "arn:aws:states:us-east-1:1:stateMachine:x", {}, {})


def test_the_run_view_reads_partition_json_when_the_run_has_one(caplog):
    key = keys.partition_key("run-1")
    assert key == "runs/run-1/partition.json"
    assert load_partition("run-1", OUTPUTS, FakeS3({key: json.dumps(counts().to_json()).encode()})) == counts()
    assert load_partition("run-1", OUTPUTS, FakeS3({})) is None  # any run not made by `fedstep local`
    assert load_partition("run-1", OUTPUTS, FakeS3({key: b"{not json"})) is None
    assert "unreadable, so the report has no label histogram" in caplog.text


# -- issue 21, finding 5: data as its sites hold it (--partition natural) ---------------------------


def test_a_natural_split_gives_each_client_exactly_its_sites_examples_less_the_held_out_share(site):
    x, y, groups = __import__(MODULE).by_site()
    x = x.astype(np.float32)  # as the clients hold it
    prepared, counts = partition_data(f"{MODULE}:by_site", CLIENTS, parse_scheme("natural"), seed=3)
    assert counts.scheme == "natural" and dict(counts.sites) == {
        "client-1": "east",
        "client-2": "north",
        "client-3": "south",
    }  # one client per site, sites in sorted order
    seen: list[bytes] = []
    for i, client in enumerate(CLIENTS, start=1):
        mine = groups == counts.sites[client]
        whole = np.bincount(y[mine], minlength=4)
        held = whole - np.asarray(counts.clients[client])
        assert held.sum() == -(-mine.sum() // 5) and (abs(held - 0.2 * whole) <= 1).all()  # 20%, by label
        (x_train, _), (x_test, _) = load_local_data(f"{MODULE}:by_site", f"{i}/3", "natural", seed=3)
        rows = {r.tobytes() for r in x[mine]}
        local = [r.tobytes() for r in np.concatenate([x_train, x_test])]
        assert set(local) <= rows and len(local) == sum(counts.clients[client])  # its site's examples only
        seen += local
    assert len(seen) == len(set(seen)) == len(prepared.pool) and len(prepared.heldout) == 400 - len(seen)


def test_sites_given_with_their_own_splits_keep_them_and_their_test_splits_are_the_held_out_set(site):
    given = __import__(MODULE).site_splits()
    prepared, counts = partition_data(f"{MODULE}:site_splits", CLIENTS, parse_scheme("natural"), seed=3)
    assert list(counts.sites.values()) == ["north", "east", "south"]  # the mapping's order
    assert len(prepared.heldout) == 20 + 30 + 10  # no data left over: the union of the sites' test splits
    (x_train, y_train), (x_test, y_test) = load_local_data(f"{MODULE}:site_splits", "2/3", "natural", seed=3)
    (gx_train, gy_train), (gx_test, gy_test) = given["east"]
    assert np.array_equal(x_train, gx_train.astype(np.float32)) and np.array_equal(y_train, gy_train)
    assert np.array_equal(x_test, gx_test.astype(np.float32)) and np.array_equal(y_test, gy_test)


def test_a_site_of_two_examples_holds_one_out_and_gives_its_client_the_other_to_train_on(site):
    _, counts = partition_data(f"{MODULE}:pair_site", CLIENTS[:2], parse_scheme("natural"), seed=0)
    assert counts.sites["client-2"] == "7" and sum(counts.clients["client-2"]) == 1
    (x_train, _), (x_test, _) = load_local_data(f"{MODULE}:pair_site", "2/2", "natural", seed=0)
    assert (len(x_train), len(x_test)) == (1, 0)


@pytest.mark.parametrize(
    ("loader", "scheme", "clients", "message"),
    [
        ("good", "natural", 3, "partition natural needs the data as its sites hold it: return (x, y, groups)"),
        ("by_site", "iid", 3, "returns its sites ((x, y, groups)): use partition natural for one client per site"),
        ("site_splits", "dirichlet:0.5", 3, "returns its sites (a mapping {site: ((x_train, y_train), (x_test"),
        ("by_site", "natural", 2, "has 3 sites (east, north, south), one client each: use --clients 3"),
        ("groups_too_short", "natural", 3, "groups must name one site per example, shape (400,); got (10,)"),
        ("float_groups", "natural", 3, "groups must be whole numbers or strings naming the sites, got dtype float64"),
        ("tiny_site", "natural", 2, "site '7' has 1 example(s); each site needs at least 2 (one held out, one"),
        ("bad_site", "natural", 1, "site 'north' must be ((x_train, y_train), (x_test, y_test))"),
    ],
)
def test_a_natural_split_the_data_cannot_give_is_refused_with_the_reason(site, loader, scheme, clients, message):
    with pytest.raises(FedstepError) as raised:
        partition_data(f"{MODULE}:{loader}", CLIENTS[:clients], parse_scheme(scheme), seed=0)
    assert message in str(raised.value)


@pytest.mark.parametrize("dataset", ["heart", "heart-raw"])
def test_heart_is_natural_by_default_and_names_its_hospitals(dataset):
    scheme = check_data_args(DemoConfig(dataset=dataset, clients=4))
    _, counts = partition_data(dataset, [f"client-{i}" for i in (1, 2, 3, 4)], scheme, seed=0)
    assert counts.scheme == "natural" and counts.name("client-3") == "client-3 (VA Long Beach)"
