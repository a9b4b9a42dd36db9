"""Status logic as pure functions: the job state machine, failure reasons from pods, server
status, conditions, metrics parsing, admission checks and operator settings."""

from __future__ import annotations

import copy
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import yaml

from rlaif import constants as c
from rlaif.api.models import RewardServer
from rlaif.operator import admission, conditions, metrics
from rlaif.operator.job_status import Limits, Observed, RewardState, plan
from rlaif.operator.main import kopf_argv
from rlaif.operator.reconcile import _events, expired
from rlaif.operator.server_status import problem_of, server_status
from rlaif.operator.settings import OperatorConfig
from rlaif.operator.workloads import Problem, WorkloadState, pod_problem, summarize_job
from tests.conftest import EXAMPLES

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
LIMITS = Limits(backoff_limit=2, active_deadline=None, rewards_timeout=600, start_timeout=300)
READY = [RewardState("asr", "http://a:8080", 1, 1), RewardState("judge", "http://j:8080", 2, 1)]
RUNNING = WorkloadState(active=1, ready=1, created=T0)


def obs(**kw: Any) -> Observed:
    base: dict[str, Any] = {"labeling_required": False, "suspended": False, "labeling": None,
                            "rewards": READY, "trainer": None, "nodes": 1}
    return Observed(**{**base, **kw})


def cond(status: dict[str, Any] | Any, type_: str) -> dict[str, Any]:
    conds = status["conditions"] if isinstance(status, dict) else status.conditions
    found = conditions.find(conds, type_)
    assert found is not None, f"no {type_} condition in {conds}"
    return found


def test_waits_for_reward_servers_then_times_out_with_their_problem() -> None:
    waiting = [RewardState("asr", None, 1, 0, problem="CrashLoopBackOff: back-off 5m0s")]
    p = plan({}, obs(rewards=waiting), LIMITS, T0)
    assert p.phase == "Starting" and p.rewards and not p.trainer
    assert cond(p, c.COND_REWARDS_READY)["status"] == "False"
    assert "asr 0/1 ready (CrashLoopBackOff" in cond(p, c.COND_READY)["message"]
    later = plan({"phase": p.phase, "conditions": p.conditions}, obs(rewards=waiting), LIMITS,
                 T0 + timedelta(seconds=601))
    assert later.phase == "Failed" and cond(later, c.COND_FAILED)["reason"] == "RewardsNotReady"
    assert "not ready within 600 s" in cond(later, c.COND_FAILED)["message"]


def test_rewards_ready_creates_trainers_and_running_sets_start_time() -> None:
    p = plan({}, obs(), LIMITS, T0)
    assert p.phase == "Starting" and p.trainer and cond(p, c.COND_READY)["reason"] == \
        "CreatingTrainers"
    p = plan({"phase": "Starting", "conditions": p.conditions}, obs(trainer=RUNNING), LIMITS, T0)
    assert p.phase == "Running" and p.status["startTime"] == "2026-01-01T00:00:00Z"
    assert cond(p, c.COND_READY)["status"] == "True" and cond(p, c.COND_RUNNING)["status"] == \
        "True"


def test_gang_failure_restarts_until_backoff_limit_then_fails_with_reason() -> None:
    failed = WorkloadState(failed=True, reason="OOMKilled", message="container trainer was "
                           "killed for exceeding its memory limit (exit code 137)", created=T0)
    p = plan({"phase": "Running", "restarts": 1}, obs(trainer=failed), LIMITS, T0)
    assert p.phase == "Starting" and p.restarts == 2 and p.trainer
    assert cond(p, c.COND_RUNNING)["reason"] == "Restarting"
    p = plan({"phase": "Running", "restarts": 2}, obs(trainer=failed), LIMITS, T0)
    assert p.phase == "Failed" and p.restarts == 2
    failed_cond = cond(p, c.COND_FAILED)
    assert failed_cond["reason"] == "BackoffLimitExceeded"
    assert "failed 3 time(s)" in failed_cond["message"] and "OOMKilled" in failed_cond["message"]


def test_deadline_is_measured_from_the_first_start_across_restarts() -> None:
    limits = Limits(backoff_limit=2, active_deadline=3600, rewards_timeout=600, start_timeout=300)
    status = {"phase": "Running", "startTime": "2026-01-01T00:00:00Z"}
    assert plan(status, obs(trainer=RUNNING), limits, T0 + timedelta(seconds=3599)).phase == \
        "Running"
    p = plan(status, obs(trainer=RUNNING), limits, T0 + timedelta(seconds=3601))
    assert p.phase == "Failed" and cond(p, c.COND_FAILED)["reason"] == "DeadlineExceeded"
    assert p.stop_trainer


def test_pending_trainers_show_why_and_fail_after_the_start_timeout() -> None:
    stuck = WorkloadState(problem=Problem("ImagePullBackOff", "Back-off pulling image x"),
                          created=T0)
    p = plan({"phase": "Starting"}, obs(trainer=stuck), LIMITS, T0 + timedelta(seconds=10))
    assert p.phase == "Starting" and cond(p, c.COND_READY)["reason"] == "ImagePullBackOff"
    p = plan({"phase": "Starting"}, obs(trainer=stuck), LIMITS, T0 + timedelta(seconds=301))
    assert p.phase == "Failed" and "did not start within 300 s" in cond(p, c.COND_FAILED)[
        "message"]


def test_succeeded_is_terminal() -> None:
    p = plan({"phase": "Running"}, obs(trainer=WorkloadState(succeeded=True)), LIMITS, T0)
    assert p.phase == "Succeeded" and p.status["completionTime"]
    again = plan({"phase": "Succeeded", "conditions": p.conditions}, obs(), LIMITS, T0)
    assert again.phase == "Succeeded" and not (again.rewards or again.trainer or again.labeling)


def test_labeling_comes_before_rewards_and_its_failure_fails_the_job() -> None:
    p = plan({}, obs(labeling_required=True), LIMITS, T0)
    assert p.phase == "Labeling" and p.labeling and not p.rewards
    done = plan({"conditions": p.conditions}, obs(
        labeling_required=True, labeling=WorkloadState(succeeded=True)), LIMITS, T0)
    assert done.phase == "Starting" and done.rewards and cond(done, c.COND_LABELED)["status"] == \
        "True"
    bad = WorkloadState(failed=True, reason="ExitCode", message="container labeler exited "
                        "with code 2: OPENAI_API_KEY is not set")
    p = plan({}, obs(labeling_required=True, labeling=bad), LIMITS, T0)
    assert p.phase == "Failed" and cond(p, c.COND_FAILED)["reason"] == "LabelingFailed"
    assert "OPENAI_API_KEY is not set" in cond(p, c.COND_FAILED)["message"]


def test_suspend_and_resume() -> None:
    p = plan({"phase": "Running"}, obs(trainer=RUNNING, suspended=True), LIMITS, T0)
    assert p.phase == "Suspended" and p.trainer and p.rewards
    assert cond(p, c.COND_SUSPENDED)["status"] == "True"
    idle = WorkloadState(created=T0)
    p = plan({"phase": "Suspended", "conditions": p.conditions}, obs(trainer=idle), LIMITS, T0)
    assert p.phase == "Starting" and cond(p, c.COND_SUSPENDED)["reason"] == "Resumed"


def test_condition_transition_time_moves_only_when_status_flips() -> None:
    conds = conditions.set_condition([], "Ready", False, "A", "a", T0)
    later = T0 + timedelta(minutes=5)
    same = conditions.set_condition(conds, "Ready", False, "B", "b", later)
    assert same[0]["lastTransitionTime"] == conds[0]["lastTransitionTime"]
    assert same[0]["reason"] == "B"
    flipped = conditions.set_condition(same, "Ready", True, "C", "c", later)
    assert flipped[0]["lastTransitionTime"] == "2026-01-01T00:05:00Z"
    assert [x["type"] for x in conditions.transitions(conds, flipped)] == ["Ready"]
    assert conditions.transitions(flipped, flipped) == []


def test_transitions_sharing_a_reason_are_one_event_naming_each() -> None:
    waiting = "waiting for reward servers: asr 0/1 ready"
    conds: list[dict[str, Any]] = []
    for type_, value, reason, message in [
            ("RewardsReady", False, "RewardsNotReady", waiting),
            ("Ready", False, "RewardsNotReady", waiting),
            ("ChildrenReady", True, "Synced", "every child exists"),
            ("Failed", True, "RewardsNotReady", "gave up")]:
        conds = conditions.set_condition(conds, type_, value, reason, message, T0)
    assert _events([], conds) == [
        ("Normal", "RewardsNotReady", f"RewardsReady=False, Ready=False: {waiting}"),
        ("Warning", "RewardsNotReady", "Failed=True: gave up")]
    later = conditions.set_condition(conds, "Ready", False, "Starting", "trainers", T0)
    assert _events(conds, later) == [("Normal", "Starting", "Ready=False: trainers")]


def test_children_ready_gets_an_event_only_once_something_was_refused() -> None:
    synced = conditions.set_condition([], "ChildrenReady", True, "Synced", "every child", T0)
    assert _events([], synced) == []
    refused = conditions.set_condition(synced, "ChildrenReady", False, "QuotaExceeded",
                                       "exceeded quota", T0)
    assert _events(synced, refused) == [
        ("Normal", "QuotaExceeded", "ChildrenReady=False: exceeded quota")]
    again = conditions.set_condition(refused, "ChildrenReady", True, "Synced", "every child", T0)
    assert _events(refused, again) == [("Normal", "Synced", "ChildrenReady=True: every child")]


# --------------------------------------------------------------------------- pods and Jobs


def pod(**status: Any) -> dict[str, Any]:
    return {"metadata": {"name": "p"}, "status": status}


@pytest.mark.parametrize("status,reason,words", [
    ({"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                      "message": "0/3 nodes are available: insufficient nvidia.com/gpu"}]},
     "Unschedulable", "insufficient nvidia.com/gpu"),
    ({"containerStatuses": [{"name": "trainer", "state": {"waiting": {
        "reason": "ImagePullBackOff", "message": "Back-off pulling image \"bad:tag\""}}}]},
     "ImagePullBackOff", "bad:tag"),
    ({"containerStatuses": [{"name": "trainer", "state": {"terminated": {
        "reason": "OOMKilled", "exitCode": 137}}}]}, "OOMKilled", "memory limit"),
    ({"containerStatuses": [{"name": "trainer", "state": {"terminated": {
        "reason": "Error", "exitCode": 3, "message": "a\nb\nValueError: spec.steps"}}}]},
     "ExitCode", "code 3: a | b | ValueError: spec.steps"),
    ({"containerStatuses": [{"name": "server", "state": {"waiting": {
        "reason": "CrashLoopBackOff"}}, "lastState": {"terminated": {"exitCode": 1,
                                                                      "message": "no model"}}}]},
     "CrashLoopBackOff", "last run: container server exited with code 1: no model"),
    ({"initContainerStatuses": [{"name": "wait-for-rank-0", "state": {"terminated": {
        "exitCode": 1, "message": "rank-0 address x did not resolve"}}}]},
     "ExitCode", "did not resolve"),
])
def test_pod_problem_names_the_cause(status: dict[str, Any], reason: str, words: str) -> None:
    problem = pod_problem(pod(**status))
    assert problem is not None and problem.reason == reason and words in problem.message


def test_healthy_pods_have_no_problem() -> None:
    assert pod_problem(pod(phase="Running", containerStatuses=[
        {"name": "t", "state": {"running": {}}},
        {"name": "u", "state": {"terminated": {"exitCode": 0}}}])) is None


def test_failed_job_reports_the_pod_reason_but_keeps_deadline_exceeded() -> None:
    oom = pod(containerStatuses=[{"name": "t", "state": {"terminated": {
        "reason": "OOMKilled", "exitCode": 137}}}])
    job: dict[str, Any] = {"metadata": {"creationTimestamp": "2026-01-01T00:00:00Z"},
                           "status": {"conditions": [{"type": "Failed", "status": "True",
                                                      "reason": "BackoffLimitExceeded"}]}}
    state = summarize_job(job, [oom])
    assert state is not None and state.failed and state.reason == "OOMKilled"
    assert state.created == T0
    job["status"]["conditions"][0].update(reason="DeadlineExceeded", message="too long")
    state = summarize_job(job, [oom])
    assert state is not None and state.reason == "DeadlineExceeded"
    assert summarize_job(None, []) is None
    done = summarize_job({"status": {"conditions": [{"type": "Complete", "status": "True"}]}}, [])
    assert done is not None and done.succeeded


# --------------------------------------------------------------------------- servers


def _server() -> RewardServer:
    doc = yaml.safe_load((EXAMPLES / "rewardserver-shared.yaml").read_text())
    doc["metadata"]["namespace"] = "ml"
    return RewardServer.model_validate(doc)


def test_server_status_for_scale_subresource_and_jobs() -> None:
    server = _server()
    dep = {"status": {"replicas": 2, "readyReplicas": 1}}
    st = server_status(server, dep, [], {}, T0)
    assert st["replicas"] == 2 and st["readyReplicas"] == 1
    assert st["selector"] == "app.kubernetes.io/instance=dnsmos," \
                             "app.kubernetes.io/component=reward-server"
    assert st["endpoint"] == "http://dnsmos.ml.svc:8080"
    assert cond(st, c.COND_READY)["status"] == "True" and problem_of(st) == ""
    crash = pod(containerStatuses=[{"name": "server", "state": {"waiting": {
        "reason": "CrashLoopBackOff", "message": "back-off 5m0s"}}}])
    st = server_status(server, {"status": {"replicas": 2}}, [crash], st, T0)
    assert cond(st, c.COND_READY)["reason"] == "CrashLoopBackOff"
    assert problem_of(st) == "CrashLoopBackOff: back-off 5m0s"
    st = server_status(server, None, [], st, T0, wanted=0)
    assert cond(st, c.COND_READY)["reason"] == "ScaledToZero"


# --------------------------------------------------------------------------- metrics


def test_prometheus_gauges_become_status_fields() -> None:
    text = (
        "# HELP rlaif_step Current step.\n# TYPE rlaif_step gauge\nrlaif_step 41.0\n"
        "# TYPE rlaif_total_steps gauge\nrlaif_total_steps 1000\n"
        "# TYPE rlaif_last_checkpoint_step gauge\nrlaif_last_checkpoint_step 40\n"
        "# TYPE rlaif_reward_mean gauge\nrlaif_reward_mean 0.5\n"
        "# TYPE rlaif_reward_std gauge\nrlaif_reward_std 0.1\n"
        "# TYPE rlaif_loss gauge\nrlaif_loss NaN\n"
        "# TYPE rlaif_samples_per_second gauge\nrlaif_samples_per_second 3.5\n"
        "# TYPE rlaif_reward_mean_by_name gauge\n"
        'rlaif_reward_mean_by_name{reward="asr"} 0.9\n'
        'rlaif_reward_mean_by_name{reward="judge"} 0.25\n'
        "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 12.0\n")
    assert metrics.status_from_metrics(text) == {
        "step": 41, "totalSteps": 1000,
        "lastCheckpoint": {"step": 40, "path": "/checkpoints/step-00000040"},
        "metrics": {"reward": 0.5, "rewardStd": 0.1, "samplesPerSecond": 3.5,
                    "reward_asr": 0.9, "reward_judge": 0.25}}
    assert metrics.status_from_metrics("") == {}
    assert metrics.metrics_url({"status": {"podIP": "10.0.0.7"}}, 9090) == \
        "http://10.0.0.7:9090/metrics"
    assert metrics.metrics_url({"status": {}}, 9090) is None


# --------------------------------------------------------------------------- admission


def _job_doc() -> dict[str, Any]:
    return yaml.safe_load((EXAMPLES / "grpo-rlaif-spa.yaml").read_text())


def test_admission_refuses_immutable_changes_and_allows_live_ones() -> None:
    old = _job_doc()
    new = copy.deepcopy(old)
    new["spec"]["rewards"][0]["replicas"] = 3
    new["spec"]["rewards"][1]["weight"] = 0.5
    assert admission.admission_errors(old, new) == []
    new["spec"]["algorithm"] = "dlpo"
    new["spec"]["policy"]["model"] = "/models/other"
    errors = admission.admission_errors(old, new)
    assert any(e.startswith("spec.algorithm: cannot be changed") for e in errors)
    assert any(e.startswith("spec.policy: cannot be changed") for e in errors)


def test_admission_refuses_invalid_specs_naming_the_field() -> None:
    doc = _job_doc()
    doc["spec"]["rewards"][1]["weight"] = 0
    (error,) = admission.admission_errors(None, doc)
    assert error.startswith("spec.rewards[1].weight: must be greater than 0")
    doc = _job_doc()
    del doc["spec"]["labeling"]["input"]
    (error,) = admission.admission_errors(None, doc)
    assert error.startswith("spec.labeling.input: required on a cluster")


def test_accepted_spec_round_trips_through_the_annotation() -> None:
    doc = _job_doc()
    doc["metadata"]["annotations"] = admission.accepted_annotation(doc["spec"])
    assert admission.accepted_spec(doc) == admission.immutable_part(doc["spec"])
    assert admission.accepted_spec({"metadata": {}}) is None


# --------------------------------------------------------------------------- process


def test_settings_from_environment() -> None:
    cfg = OperatorConfig.from_env({"RLAIF_RECONCILE_INTERVAL": "2.5",
                                   "RLAIF_SCRAPE_METRICS": "false", "RLAIF_WEBHOOK_PORT": "9443"})
    assert cfg.reconcile_interval == 2.5 and cfg.scrape_metrics is False
    assert cfg.webhook_port == 9443 and cfg.start_timeout == 1800
    with pytest.raises(ValueError, match="RLAIF_START_TIMEOUT='soon': expected int"):
        OperatorConfig.from_env({"RLAIF_START_TIMEOUT": "soon"})


def test_kopf_arguments_get_defaults_unless_given() -> None:
    assert kopf_argv([]) == ["run", "--module", "rlaif.operator.handlers", "--all-namespaces",
                             "--standalone"]
    argv = kopf_argv(["--namespace=ml", "--peering", "rlaif", "--log-format", "json"])
    assert "--all-namespaces" not in argv and "--standalone" not in argv
    assert argv[-5:] == ["--namespace=ml", "--peering", "rlaif", "--log-format", "json"]


def test_finished_jobs_expire_after_their_ttl() -> None:
    body: dict[str, Any] = {
        "spec": {"runPolicy": {"ttlSecondsAfterFinished": 60}},
        "status": {"phase": "Succeeded", "completionTime": "2026-01-01T00:00:00Z"}}
    assert not expired(body, T0 + timedelta(seconds=59))
    assert expired(body, T0 + timedelta(seconds=60))
    running = {**body, "status": {**body["status"], "phase": "Running"}}
    assert not expired(running, T0 + timedelta(days=1))
    assert not expired({**body, "spec": {"runPolicy": {}}}, T0 + timedelta(days=1))


def test_pods_that_could_not_be_created_report_the_controllers_event() -> None:
    job = {"metadata": {"creationTimestamp": "2026-01-01T00:00:00Z"}, "status": {}}
    events = [
        {"reason": "SuccessfulCreate", "message": "Created pod: x",
         "lastTimestamp": "2026-01-01T00:00:03Z"},
        {"reason": "FailedCreate", "message": "pods \"x\" is forbidden: exceeded quota: gpu, "
         "requested: requests.nvidia.com/gpu=8, limited: requests.nvidia.com/gpu=4",
         "lastTimestamp": "2026-01-01T00:00:02Z"}]
    state = summarize_job(job, [], events)
    assert state is not None and state.problem is not None
    assert state.problem.reason == "FailedCreate" and "exceeded quota" in state.problem.message
    p = plan({"phase": "Starting"}, obs(trainer=state), LIMITS, T0 + timedelta(seconds=5))
    assert cond(p, c.COND_READY)["reason"] == "FailedCreate"


def test_reward_server_reports_its_deployments_quota_failure() -> None:
    dep = {"status": {"replicas": 0, "conditions": [{
        "type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
        "message": "pods \"dnsmos-1\" is forbidden: exceeded quota: cpu"}]}}
    st = server_status(_server(), dep, [], {}, T0)
    assert cond(st, c.COND_READY)["reason"] == "FailedCreate"
    assert "exceeded quota" in problem_of(st)


# --------------------------------------------------------------------------- failure policy


def _terminated(name: str, code: int, at: str, **cond: str) -> dict[str, Any]:
    box = {"name": "trainer", "state": {"terminated": {"exitCode": code, "finishedAt": at}}}
    status: dict[str, Any] = {"phase": "Failed", "containerStatuses": [box]}
    if cond:
        status["conditions"] = [{"type": "DisruptionTarget", "status": "True", **cond}]
    return {"metadata": {"name": name}, "status": status}


FAILED_JOB = {"status": {"conditions": [{"type": "Failed", "status": "True",
                                         "reason": "PodFailurePolicy"}]}}


def test_root_cause_is_the_first_failing_rank_not_a_siblings_sigterm() -> None:
    crashed = _terminated("t-1", 1, "2026-01-01T00:00:05Z")
    sigterm = _terminated("t-0", 143, "2026-01-01T00:00:05Z")
    later = _terminated("t-2", 1, "2026-01-01T00:00:09Z")
    state = summarize_job(FAILED_JOB, [later, sigterm, crashed])
    assert state is not None and state.exit_code == 1 and not state.disrupted
    assert state.message.startswith("pod t-1: container trainer exited with code 1")


def test_a_preempted_rank_is_the_root_cause_of_its_gangs_failure() -> None:
    evicted = _terminated("t-0", 143, "2026-01-01T00:00:05Z", reason="EvictionByEvictionAPI",
                          message="Eviction API: evicting")
    sibling = _terminated("t-1", 1, "2026-01-01T00:00:07Z")
    state = summarize_job(FAILED_JOB, [sibling, evicted])
    assert state is not None and state.disrupted and state.reason == "EvictionByEvictionAPI"


def test_running_only_once_every_pod_of_the_gang_is_ready() -> None:
    pending = WorkloadState(active=2, ready=1, created=T0)
    p = plan({"phase": "Starting"}, obs(trainer=pending, nodes=2), LIMITS, T0)
    assert p.phase == "Starting" and "startTime" not in p.status
    p = plan({"phase": "Starting"}, obs(trainer=WorkloadState(active=2, ready=2), nodes=2),
             LIMITS, T0)
    assert p.phase == "Running"


def test_exit_code_2_fails_at_once_with_budget_left() -> None:
    bad = WorkloadState(failed=True, reason="ExitCode", message="pod t-0: exited with code 2",
                        exit_code=2)
    p = plan({"phase": "Running", "restarts": 0}, obs(trainer=bad), LIMITS, T0)
    assert p.phase == "Failed" and cond(p, c.COND_FAILED)["reason"] == "InvalidConfig"


def test_disruption_restarts_without_using_the_backoff_limit() -> None:
    preempted = WorkloadState(failed=True, reason="PreemptionByScheduler", message="preempted",
                              exit_code=143, disrupted=True)
    status = {"phase": "Running", "restarts": 2}  # the budget (backoffLimit 2) is spent
    p = plan(status, obs(trainer=preempted, attempt=4), LIMITS, T0)
    assert p.phase == "Starting" and p.restarts == 2 and p.status["disruptions"] == 1
    assert "not counted" in cond(p, c.COND_RUNNING)["message"]


def test_restarts_back_off_exponentially_and_count_each_failure_once() -> None:
    failed = WorkloadState(failed=True, reason="ExitCode", message="exited with code 1",
                           exit_code=1)
    limits = Limits(backoff_limit=5, active_deadline=None, rewards_timeout=600,
                    start_timeout=300, restart_backoff=10)
    p = plan({"phase": "Running", "restarts": 2}, obs(trainer=failed, attempt=2), limits, T0)
    assert p.restarts == 3 and p.attempt == 2, "no new gang before the backoff has passed"
    assert p.status["restartAfter"] == "2026-01-01T00:00:40Z"  # 10 s x 2^(3-1)
    status = {"phase": p.phase, "conditions": p.conditions, "restarts": p.restarts, **p.status}
    again = plan(status, obs(trainer=failed, attempt=2), limits, T0 + timedelta(seconds=39))
    assert again.restarts == 3 and again.attempt == 2, "the same failure is counted once"
    due = plan(status, obs(trainer=failed, attempt=2), limits, T0 + timedelta(seconds=40))
    assert due.restarts == 3 and due.attempt == 3 and due.trainer


# --------------------------------------------------------------------------- queues


def test_a_gang_kueue_holds_is_queued_with_no_start_timeout() -> None:
    held = WorkloadState(created=T0, suspended=True)
    much_later = T0 + timedelta(seconds=LIMITS.start_timeout * 100)
    p = plan({"phase": "Starting"}, obs(trainer=held, queued=True), LIMITS, much_later)
    assert p.phase == "Queued" and cond(p, c.COND_READY)["reason"] == "Queued"
    # Admitted: the start timeout counts from the Job's (re)start, not its creation.
    admitted = WorkloadState(created=T0, started=much_later)
    p = plan({"phase": "Queued"}, obs(trainer=admitted, queued=True), LIMITS,
             much_later + timedelta(seconds=10))
    assert p.phase == "Starting"


def test_reward_servers_gated_by_kueue_do_not_time_out() -> None:
    gated = [RewardState("asr", None, 1, 0, problem="SchedulingGated: waiting for admission")]
    p = plan({}, obs(rewards=gated, queued=True), LIMITS, T0 + timedelta(days=1))
    assert p.phase == "Queued" and not p.trainer


def test_suspending_a_queued_job_deletes_its_gang_instead_of_suspending_it() -> None:
    p = plan({"phase": "Running"}, obs(trainer=RUNNING, suspended=True, queued=True, attempt=3),
             LIMITS, T0)
    assert p.phase == "Suspended" and p.stop_trainer and not p.trainer and p.attempt == 4
    p = plan({"phase": "Running"}, obs(trainer=RUNNING, suspended=True, attempt=3), LIMITS, T0)
    assert p.phase == "Suspended" and not p.stop_trainer and p.trainer and p.attempt == 3


def test_only_objects_the_owner_controls_pass_the_ownership_check() -> None:
    from rlaif.operator.kube import OwnershipConflict, check_owner

    def obj(*refs: dict[str, Any]) -> dict[str, Any]:
        return {"kind": "Deployment", "metadata": {"name": "asr", "namespace": "ml",
                                                   "ownerReferences": list(refs)}}

    mine = {"kind": "RewardServer", "name": "asr", "uid": "u1", "controller": True}
    assert check_owner(None, "RewardServer", "u1") is None
    assert check_owner(obj(mine), "RewardServer", "u1") is not None
    for foreign in (obj(), obj({**mine, "uid": "u2"}), obj({**mine, "controller": False})):
        with pytest.raises(OwnershipConflict, match=r"Deployment ml/asr exists and is"):
            check_owner(foreign, "RewardServer", "u1")
