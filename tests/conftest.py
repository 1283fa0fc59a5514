"""Shared fixtures and the suite's tiers. No test reaches real AWS: fake credentials are set for the whole
session and every AWS call goes to moto (decorator mode or a moto server on 127.0.0.1).

Tiers (pytest markers, given here to every test from what it uses; `pytest -m unit`, `make test-fast`):
- `unit`: the core, the agent and the CLIs' logic in the test's process, on the in-memory adapters
  (`tests/memory_ports.py`) or moto in-process; no local cloud, no process started, no synthesis. A unit
  test that starts a process, deploys a local cloud or synthesizes the stack fails, naming this rule.
- `contract`: the same tests against each implementation of a port (memory and AWS adapters on moto).
  A test is in it when marked `@pytest.mark.contract` (or its module `pytestmark = pytest.mark.contract`).
- `cloud`: the real stack on the local cloud (fixtures `local_cloud`/`cloud`, or a module of `CLOUD`
  deploying its own), agents in the test's process or as processes, the moto gaps' canaries.
- `e2e`: what a user runs as a process with no local cloud fixture: `fedstep local`, the CLIs' own error
  paths, the notebook, `cdk deploy`, the client-only install, Chromium (`E2E`, `E2E_TESTS`).
- `infra`: synthesis, cdk-nag, cfn-lint, import-linter, IAM policies (`INFRA`, `INFRA_TESTS`).
The first rule that applies wins: a marker written on the test; then `INFRA`/`E2E`/`CLOUD` by module; then
a test using `local_cloud` is `cloud`; then `INFRA_TESTS`/`E2E_TESTS` by test function; else `unit`.

One local cloud per worker: `local_cloud` is the deployment of `DEFAULT_CONFIG` (two clients), deployed
once per pytest-xdist worker and shared by every module that uses it (`SharedCloud`). moto is global to a
process, so one local cloud runs at a time: another deployment, moto server or `mock_aws` first stops
the shared one (it is deployed again when next asked for). Between modules the shared cloud stops the
executions still running and empties the client queues; while a module that does not use it runs, the
environment variables it set (endpoint, credentials files) are put back as they were.
"""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

# The processor's name is asked once, now: TensorFlow's import asks `platform.processor()`, which runs
# `uname -p` the first time, so a unit test that happened to import TensorFlow first in its worker would
# be refused for starting a process (the answer is kept for the process's life).
platform.processor()

for _name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL", "AWS_ROLE_ARN"):
    os.environ.pop(_name, None)
os.environ.update(
    {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "AWS_ACCOUNT_ID_ENDPOINT_MODE": "disabled",
        "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20",
        "CDK_DISABLE_VERSION_CHECK": "1",
        "TF_CPP_MIN_LOG_LEVEL": "3",
        # three workers on two cores, each with processes of its own: one TensorFlow thread per process, not a
        # pool of every core in each (which spin against one another); `fedstep local` keeps these for its agents
        "TF_NUM_INTRAOP_THREADS": "1",
        "TF_NUM_INTEROP_THREADS": "1",
        "OMP_NUM_THREADS": "1",
    }
)

TIERS = ("unit", "contract", "cloud", "e2e", "infra")

INFRA = {"test_infra_template", "test_synth_cache", "test_cdk_cli", "test_architecture", "test_iam_policy"}
"""Modules that synthesize or lint the stack, or check IAM policies."""

E2E = {
    "test_demo",
    "test_demo_stops",
    "test_demo_own_data",
    "test_notebook",
    "test_cdk_deploy",
    "test_client_install",
    "test_kept_cloud",
    "test_scale",
    "test_sliced_1gib",
    "test_secure_demo",
}
"""Modules whose tests run `fedstep local`, a notebook kernel, `cdk deploy` or a fresh install."""

CLOUD = {
    "test_secure_cloud",
    "test_adversarial_cloud",
    "test_selection_cloud",
    "test_sliced_cloud",
    "test_operations",
    "test_moto_gaps",
    "test_torch_trainer",
}
"""Modules deploying a local cloud (or a moto server) of their own."""

INFRA_TESTS = {
    "test_adversarial.py::test_9_clients_without_a_principal_are_warned_of_and_the_execution_log_is_encrypted",
    "test_adversarial.py::test_20_9_no_client_role_trusts_the_account_root_unless_the_deployment_is_a_trial",
    "test_execution_history.py::test_fedsteps_budget_is_the_worst_case_of_the_synthesized_state_machine",
    "test_cost.py::test_fedsteps_own_paths_match_the_synthesized_state_machine",
    "test_evaluate.py::test_a_clients_role_may_put_its_own_evaluation_items_only",
    "test_evaluate.py::test_the_round_topics_policy_lets_the_operators_identity_publish_over_tls",
}
"""Tests in other modules that synthesize the stack (by `module.py::function`, every parameter)."""

E2E_TESTS = {
    "test_custom_data.py::test_fedstep_local_prints_one_clear_error_and_no_traceback",
    "test_client_cli.py::test_an_agent_waiting_for_its_config_gives_up_naming_the_file",
    "test_client_cli.py::test_config_mistakes_are_named",
    "test_aws_errors.py::test_the_operator_without_a_region_is_told_the_flags_not_an_agent_config_file",
    "test_python_api.py::test_importing_fedstep_and_naming_the_api_imports_nothing_heavy",
    "test_report_render.py::test_the_report_renders_in_headless_chromium_with_every_plot_drawn",
    "test_strategy_settings.py::test_a_parameter_flag_without_a_value_is_refused_before_anything_is_deployed",
    "test_strategy_settings.py::test_every_strategy_is_listed_with_its_parameters_and_defaults",
}
"""Tests in other modules that start a process (a CLI as the user runs it, Chromium)."""


def tier_of(item: pytest.Item) -> str:
    """The item's tier, by the rules of this module's docstring."""
    written = [m.name for m in item.iter_markers() if m.name in TIERS]
    if written:
        return written[0]
    module = item.path.stem
    function = f"{item.path.name}::{getattr(item, 'originalname', item.name)}"
    if module in INFRA:
        return "infra"
    if module in E2E:
        return "e2e"
    if module in CLOUD or "local_cloud" in item.fixturenames:
        return "cloud"
    if function in INFRA_TESTS:
        return "infra"
    if function in E2E_TESTS:
        return "e2e"
    return "unit"


def pytest_configure(config: pytest.Config) -> None:
    for tier, what in {
        "unit": "the core and the agent in the test's process, on in-memory adapters (make test-fast)",
        "contract": "the same tests on each implementation of a port (make test-fast)",
        "cloud": "the real stack on the local cloud",
        "e2e": "commands run as processes: fedstep local, the CLIs, the notebook, cdk deploy",
        "infra": "synthesis, cdk-nag, cfn-lint, import-linter, IAM policies",
    }.items():
        config.addinivalue_line("markers", f"{tier}: {what}")


SLOWEST_FIRST = ("e2e", "cloud of its own", "cloud", "infra", "contract", "unit")
"""The order modules are handed to pytest-xdist's workers (`make test` runs `--dist loadfile
--no-loadscope-reorder`), by their slowest tier: the longest first, so that no worker is left alone with a
long module at the end; the modules that deploy a cloud of their own (`CLOUD`) before those sharing the
worker's, so that the shared one is deployed once and not again after each of them; the unit tests' `mock_aws`
last, as it too stops the shared cloud."""


def _order_of(item: pytest.Item) -> int:
    tiers = [t for t in TIERS if item.get_closest_marker(t)]
    slowest = min(SLOWEST_FIRST.index(t) for t in tiers)
    if SLOWEST_FIRST[slowest] == "cloud" and item.path.stem in CLOUD:
        return SLOWEST_FIRST.index("cloud of its own")
    return slowest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        tier = tier_of(item)
        if not item.get_closest_marker(tier):
            item.add_marker(getattr(pytest.mark, tier))
    order: dict[Any, int] = {}
    for item in items:
        order[item.path] = min(order.get(item.path, len(SLOWEST_FIRST)), _order_of(item))
    items.sort(key=lambda item: order[item.path])  # stable: each module's tests stay together and in order


class TierBreach(AssertionError):
    """A unit or contract test did what only the slower tiers may do."""


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """Readies the shared local cloud for the item's module; a unit or contract test (its module's
    fixtures included) may not start a process, deploy a local cloud or synthesize the stack, so that the
    fast tiers stay fast as the suite grows."""
    SHARED.on_module(item)
    if item.get_closest_marker("unit"):
        with _guarded(item.nodeid, "unit"):
            yield
    elif item.get_closest_marker("contract"):  # its moto server runs in a process of its own
        with _guarded(item.nodeid, "contract", processes=True):
            yield
    else:
        yield


def _refuse(what: str, nodeid: str, tier: str) -> Any:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise TierBreach(
            f"{nodeid} is a {tier} test (tests/conftest.py) but {what}: add it to E2E_TESTS, INFRA_TESTS or a "
            "module list there, or mark it with its tier"
        )

    return refuse


class _guarded:
    """Within the block, starting a process (unless `processes`: a contract test's moto server), a local
    cloud or a synthesis raises TierBreach."""

    def __init__(self, nodeid: str, tier: str, processes: bool = False) -> None:
        self.nodeid, self.tier, self.processes = nodeid, tier, processes
        self.saved: list[tuple[Any, str, Any]] = []

    def __enter__(self) -> None:
        from fedstep.local.cloud import LocalCloud

        guarded = [(LocalCloud, "start", "it deploys a local cloud")]
        if not self.processes:
            guarded.append((subprocess.Popen, "__init__", "it starts a process"))
        if "infra.stack" in sys.modules:  # else importing it starts the CDK's node process, refused above
            guarded.append((sys.modules["infra.stack"].FedstepStack, "__init__", "it synthesizes the stack"))
        for owner, name, what in guarded:
            self.saved.append((owner, name, owner.__dict__[name]))
            setattr(owner, name, _refuse(what, self.nodeid, self.tier))

    def __exit__(self, *exc: object) -> None:
        for owner, name, original in reversed(self.saved):
            setattr(owner, name, original)


def default_config() -> Any:
    """The deployment `local_cloud` serves: two clients, rounds of 120 s at most."""
    from infra.config import ClientConfig, DeploymentConfig

    # trial: the local cloud's clients have no principal of their own yet
    return DeploymentConfig(clients=(ClientConfig("client-1"), ClientConfig("client-2")), round_timeout_s=120)


class SharedCloud:
    """The worker's shared local cloud, keyed by deployment config (one deployed at a time)."""

    def __init__(self) -> None:
        self.cloud: Any = None
        self.config: Any = None
        self.users: set[str] = set()  # the modules (paths) with a test using `local_cloud`
        self.module: str | None = None  # the module of the test running
        self.before: dict[str, str | None] = {}  # the environment variables it changed, as they were
        self.aside: dict[str, str | None] | None = None  # the same variables, as it set them, while put aside
        self.deploying = False

    def get(self, config: Any) -> Any:
        """The local cloud of `config`, deployed unless it already is."""
        if self.cloud is not None and self.config == config:
            self.bring_back()
            return self.cloud
        self.stop()
        from fedstep.local.cloud import LocalCloud

        _stop_the_shared_cloud_before_another()
        environ = dict(os.environ)
        cloud = LocalCloud(config)
        self.deploying = True
        try:
            cloud.start()
        finally:
            self.deploying = False
        changed = {k for k in {*environ, *os.environ} if environ.get(k) != os.environ.get(k)}
        self.before = {k: environ.get(k) for k in changed}
        self.cloud, self.config = cloud, config
        return cloud

    def on_module(self, item: pytest.Item) -> None:
        """Before each test: when the module changes, the executions the last one left running are
        stopped and the queues emptied; a module that deploys its own cloud stops the shared one; one
        that does not use it runs with the environment variables as they were before it."""
        module = str(item.path)
        if module == self.module:
            return
        left, self.module = self.module, module
        if self.cloud is None:
            return
        self.bring_back()
        if left in self.users:
            self.tidy()
        if item.path.stem in CLOUD:
            self.stop()
        elif module not in self.users:
            self.put_aside()

    def tidy(self) -> None:
        """Stop the executions still running (an earlier module's rounds) and empty the client queues."""
        from fedstep.local import gaps
        from tests.cloud_helpers import drain_queues, wait_for_execution

        sfn = self.cloud.client("stepfunctions")
        arn = self.cloud.outputs.state_machine_arn
        running = sfn.list_executions(stateMachineArn=arn, statusFilter="RUNNING")["executions"]
        for execution in running:
            sfn.stop_execution(executionArn=execution["executionArn"], cause="the test module that started it ended")
        for execution in running:
            wait_for_execution(self.cloud, execution["executionArn"], timeout_s=120)
        gaps.wait_for_stream_batches()
        sqs = self.cloud.client("sqs")
        for url in self.cloud.outputs.queues.values():
            with contextlib.suppress(sqs.exceptions.PurgeQueueInProgress):  # also messages received, not deleted
                sqs.purge_queue(QueueUrl=url)
        drain_queues(self.cloud)

    def put_aside(self) -> None:
        """Give the process back the environment variables the cloud set (the cloud stays deployed)."""
        if self.cloud is not None and self.aside is None:
            self.aside = {k: os.environ.get(k) for k in self.before}
            _set(self.before)

    def bring_back(self) -> None:
        if self.aside is not None:
            _set(self.aside)
            self.aside = None

    def stop(self) -> None:
        if self.cloud is not None:
            self.bring_back()
            cloud, self.cloud, self.config = self.cloud, None, None
            cloud.stop()


def _set(values: dict[str, str | None]) -> None:
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


SHARED = SharedCloud()


def _stop_the_shared_cloud_before_another() -> None:
    """From now on, another local cloud, moto server or `mock_aws` first stops the shared cloud (moto is
    global to the process). Once per process."""
    from moto.core.models import MockAWS
    from moto.server import ThreadedMotoServer

    from fedstep.local.cloud import LocalCloud

    for owner in (LocalCloud, ThreadedMotoServer, MockAWS):
        original = owner.__dict__["start"]
        if getattr(original, "stops_the_shared_cloud", False):
            continue

        def start(self: Any, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
            if not SHARED.deploying:
                SHARED.stop()
            return _original(self, *args, **kwargs)

        start.stops_the_shared_cloud = True  # type: ignore[attr-defined]
        owner.start = start


def pytest_collection_finish(session: pytest.Session) -> None:
    SHARED.users = {str(item.path) for item in session.items if "local_cloud" in item.fixturenames}


def pytest_sessionfinish(session: pytest.Session) -> None:
    SHARED.stop()


@pytest.fixture(scope="module")
def local_cloud() -> Any:
    """The real stack (two clients) deployed into a moto server on 127.0.0.1, shared by the worker's
    modules (see the module docstring)."""
    return SHARED.get(default_config())


@pytest.fixture
def cloud(local_cloud):
    """The module's local cloud with empty client queues (nothing left over from an earlier test)."""
    from tests.cloud_helpers import drain_queues

    drain_queues(local_cloud)
    return local_cloud
