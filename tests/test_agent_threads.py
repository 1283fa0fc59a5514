"""`fedstep local` gives each agent process its share of the machine's cores for TensorFlow's thread pools."""

from __future__ import annotations

from fedstep.local.demo import THREAD_SETTINGS, agent_threads_env


def test_each_agent_gets_its_share_of_the_cores_and_at_least_one(monkeypatch):
    for name in THREAD_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    assert agent_threads_env(2, cores=8) == dict.fromkeys(THREAD_SETTINGS, "4")
    assert agent_threads_env(3, cores=2) == dict.fromkeys(THREAD_SETTINGS, "1")
    assert agent_threads_env(0, cores=2) == dict.fromkeys(THREAD_SETTINGS, "2")


def test_a_thread_setting_the_user_made_is_kept(monkeypatch):
    for name in THREAD_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "6")
    assert agent_threads_env(3, cores=12) == {
        "TF_NUM_INTRAOP_THREADS": "4",
        "TF_NUM_INTEROP_THREADS": "4",
        "OMP_NUM_THREADS": "6",
    }
