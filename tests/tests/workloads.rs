//! Jobs, CronJobs, autoscaling and node loss against a real agent and real pods: a
//! Job runs to completion and another gives up at its backoff limit after backing
//! off; CronJobs start Jobs each minute, one at a time under Forbid, keeping their
//! history limit, and bad schedules are refused; an autoscaler scales a CPU-burning
//! Deployment up and, once idle, down again; a node that stops reporting is marked
//! Unknown, tainted, and loses its pods.

use std::cell::RefCell;
use std::time::{Duration, Instant};

use serde_json::Value;
use skiff_tests::agent::{Agent, NODE_NAME};

/// Polls `kind/name` until `until` holds, failing with its last state.
fn wait_object(
    agent: &Agent,
    kind: &str,
    name: &str,
    timeout: Duration,
    until: impl Fn(Option<&Value>) -> bool,
) -> Option<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let object = agent.object(kind, name);
        if until(object.as_ref()) {
            return object;
        }
        assert!(
            Instant::now() < deadline,
            "{kind}/{name} did not get there in {timeout:?}: {}",
            object.map_or("gone".into(), |o| o["status"].to_string())
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The pods whose labels match `selector`.
fn pods_labelled(agent: &Agent, selector: &str) -> Vec<Value> {
    agent.list("pods", selector)
}

fn condition<'a>(object: &'a Value, kind: &str) -> Option<&'a Value> {
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind && c["status"] == "True")
}

fn job(name: &str, script: &str, extra_spec: &str) -> String {
    format!(
        r#"
apiVersion: batch/v1
kind: Job
metadata: {{name: {name}}}
spec:
{extra_spec}
  template:
    spec:
      restartPolicy: Never
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: busybox:1.36
        command: ["sh", "-c", "{script}"]
"#
    )
}

#[test]
fn a_job_runs_its_completions_and_is_deleted_after_its_ttl() {
    let agent = Agent::start_node(&[]);
    agent.apply(&job(
        "count",
        "sleep 1; exit 0",
        "  completions: 3\n  parallelism: 2\n  ttlSecondsAfterFinished: 3",
    ));
    let done = wait_object(&agent, "job", "count", Duration::from_secs(60), |j| {
        j.is_some_and(|j| condition(j, "Complete").is_some())
    })
    .expect("the job");
    assert_eq!(done["status"]["succeeded"], 3, "{}", done["status"]);
    assert_eq!(done["status"]["failed"], 0, "{}", done["status"]);
    assert!(done["status"]["completionTime"].is_string());
    let pods = pods_labelled(&agent, "job-name=count");
    assert_eq!(pods.len(), 3, "one pod per completion");
    assert!(pods.iter().all(|p| p["status"]["phase"] == "Succeeded"));
    // The TTL removes the Job and, with it, its pods.
    wait_object(&agent, "job", "count", Duration::from_secs(15), |j| {
        j.is_none()
    });
    let deadline = Instant::now() + Duration::from_secs(15);
    while !pods_labelled(&agent, "job-name=count").is_empty() {
        assert!(Instant::now() < deadline, "the Job's pods outlived it");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn a_failing_job_stops_at_its_backoff_limit_retrying_after_a_back_off() {
    let agent = Agent::start_node(&[]);
    // One retry: the back-off before it is 10 s (20 s for a second one).
    agent.apply(&job("flaky", "exit 3", "  backoffLimit: 1"));
    let failed = wait_object(&agent, "job", "flaky", Duration::from_secs(60), |j| {
        j.is_some_and(|j| condition(j, "Failed").is_some())
    })
    .expect("the job");
    let reason = &condition(&failed, "Failed").expect("Failed")["reason"];
    assert_eq!(reason, "BackoffLimitExceeded", "{}", failed["status"]);
    assert_eq!(failed["status"]["failed"], 2, "{}", failed["status"]);
    // No pod is started after the Job failed.
    std::thread::sleep(Duration::from_secs(2));
    let mut pods = pods_labelled(&agent, "job-name=flaky");
    assert_eq!(pods.len(), 2, "{pods:?}");
    // The retry waited out the back-off after the first pod failed (stamps are
    // whole seconds, hence 9).
    pods.sort_by_key(|p| seconds(&p["metadata"]["creationTimestamp"]));
    let failed_at =
        seconds(&pods[0]["status"]["containerStatuses"][0]["state"]["terminated"]["finishedAt"]);
    let retried_at = seconds(&pods[1]["metadata"]["creationTimestamp"]);
    assert!(
        retried_at - failed_at >= 9,
        "retried {}s after the failure",
        retried_at - failed_at
    );
    let events = agent.ok(&["describe", "job", "flaky"]);
    assert!(events.contains("BackoffLimitExceeded"), "{events}");
}

/// Seconds since the epoch of an RFC 3339 stamp in `value`.
fn seconds(value: &Value) -> i64 {
    let stamp = value
        .as_str()
        .unwrap_or_else(|| panic!("a timestamp: {value}"));
    stamp
        .parse::<jiff::Timestamp>()
        .unwrap_or_else(|e| panic!("{stamp}: {e}"))
        .as_second()
}

/// A CronJob running `script` in busybox each minute; `extra_spec` is YAML lines
/// indented two spaces. Its Jobs are labelled `cron: NAME`.
fn cronjob(name: &str, script: &str, extra_spec: &str) -> String {
    format!(
        r#"
apiVersion: batch/v1
kind: CronJob
metadata: {{name: {name}}}
spec:
  schedule: "* * * * *"
{extra_spec}
  jobTemplate:
    metadata: {{labels: {{cron: {name}}}}}
    spec:
      template:
        spec:
          restartPolicy: Never
          terminationGracePeriodSeconds: 1
          containers:
          - name: main
            image: busybox:1.36
            command: ["sh", "-c", "{script}"]
"#
    )
}

fn names(objects: &[Value]) -> Vec<String> {
    let mut names: Vec<String> = objects
        .iter()
        .map(|o| {
            o["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    names.sort();
    names
}

fn jobs_labelled(agent: &Agent, selector: &str) -> Vec<Value> {
    agent.list("jobs", selector)
}

/// Job name of the run at an RFC 3339 `scheduled` time, as the controller names it.
fn run_name(cronjob: &str, scheduled: &Value) -> String {
    format!("{cronjob}-{}", seconds(scheduled) / 60)
}

#[test]
fn cronjobs_start_a_job_each_minute_one_at_a_time_under_forbid_keeping_their_history() {
    let agent = Agent::start_node(&[]);
    agent.apply(&cronjob(
        "cron-quick",
        "exit 0",
        "  successfulJobsHistoryLimit: 1",
    ));
    agent.apply(&cronjob(
        "cron-slow",
        "sleep 600",
        "  concurrencyPolicy: Forbid",
    ));
    // The one wait of a minute or two: until the controller has seen a second run
    // of cron-quick finish (cron's granularity is a minute, so the first boundary
    // is at most 60 s away and the second 60 s later; the time allowed leaves room
    // for pods starting slowly on a busy machine). The pass that empties
    // status.active, recorded with the second run's lastScheduleTime, is the one
    // that applied the history limit.
    let first: RefCell<Option<Value>> = RefCell::new(None);
    let quick = wait_object(
        &agent,
        "cronjob",
        "cron-quick",
        Duration::from_secs(240),
        |c| {
            let Some(status) = c.map(|c| &c["status"]) else {
                return false;
            };
            let last = &status["lastScheduleTime"];
            if !last.is_string() {
                return false;
            }
            let mut first = first.borrow_mut();
            let first_run = first.get_or_insert_with(|| last.clone());
            last != first_run && status["active"].as_array().is_none_or(Vec::is_empty)
        },
    )
    .expect("the CronJob");
    let second = &quick["status"]["lastScheduleTime"];
    // The finished run beyond the history limit of 1 is gone; the second stays,
    // complete, with its pod succeeded.
    let quick_jobs = jobs_labelled(&agent, "cron=cron-quick");
    let second_job = run_name("cron-quick", second);
    assert_eq!(
        names(&quick_jobs),
        std::slice::from_ref(&second_job),
        "{quick_jobs:?}"
    );
    assert!(
        condition(&quick_jobs[0], "Complete").is_some(),
        "{}",
        quick_jobs[0]["status"]
    );
    assert_eq!(
        quick_jobs[0]["metadata"]["ownerReferences"][0]["kind"],
        "CronJob"
    );
    let pods = pods_labelled(&agent, &format!("job-name={second_job}"));
    assert_eq!(pods.len(), 1, "{pods:?}");
    assert_eq!(pods[0]["status"]["phase"], "Succeeded");
    let succeeded = &quick["status"]["lastSuccessfulTime"];
    assert!(seconds(succeeded) >= seconds(second), "{}", quick["status"]);
    // Under Forbid, the slow CronJob's first Job still runs: the second minute
    // started nothing.
    let slow_jobs = jobs_labelled(&agent, "cron=cron-slow");
    assert_eq!(slow_jobs.len(), 1, "{slow_jobs:?}");
    assert!(condition(&slow_jobs[0], "Complete").is_none());
    let slow = agent.object("cronjob", "cron-slow").expect("the CronJob");
    assert_eq!(
        slow["status"]["active"][0]["name"],
        slow_jobs[0]["metadata"]["name"]
    );
    let events = agent.ok(&["describe", "cronjob", "cron-slow"]);
    assert!(events.contains("JobAlreadyActive"), "{events}");
    let events = agent.ok(&["describe", "cronjob", "cron-quick"]);
    for reason in ["SuccessfulCreate", "SawCompletedJob", "SuccessfulDelete"] {
        assert!(events.contains(reason), "{reason} in {events}");
    }
}

#[test]
fn cronjobs_with_bad_schedules_are_refused_others_listed_and_run_by_hand() {
    let agent = Agent::start(&[]);
    for (spec, message) in [
        (
            r#"  schedule: "61 * * * *""#,
            r#"spec.schedule: minute field "61": out of range 0-59"#,
        ),
        (
            r#"  schedule: "0 0 * * MON-FUN""#,
            r#"spec.schedule: day-of-week field "MON-FUN": not a number (0-6) or a name (SUN-SAT)"#,
        ),
        (
            "  schedule: \"@daily\"\n  timeZone: Mars/Olympus",
            r#"spec.timeZone: "Mars/Olympus" is not an IANA time zone name"#,
        ),
    ] {
        let manifest =
            cronjob("cron-bad", "exit 0", spec).replace("  schedule: \"* * * * *\"\n", "");
        let out = agent.cli_with_stdin(&["apply", "-f", "-"], manifest.as_bytes());
        assert!(!out.status.success(), "{spec} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(message), "{spec}: {stderr}");
        assert!(agent.object("cronjob", "cron-bad").is_none(), "{spec}");
    }
    agent.apply(&cronjob(
        "cron-listed",
        "exit 0",
        "  timeZone: Europe/Berlin\n  suspend: true",
    ));
    let table = agent.ok(&["get", "cronjobs"]);
    let mut lines = table.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split("   ")
        .map(str::trim)
        .collect();
    assert_eq!(
        header
            .into_iter()
            .filter(|h| !h.is_empty())
            .collect::<Vec<_>>(),
        [
            "NAME",
            "SCHEDULE",
            "TIMEZONE",
            "SUSPEND",
            "ACTIVE",
            "LAST SCHEDULE",
            "AGE"
        ],
        "{table}"
    );
    let row: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        row[..row.len() - 1],
        [
            "cron-listed",
            "*",
            "*",
            "*",
            "*",
            "*",
            "Europe/Berlin",
            "true",
            "0",
            "<none>"
        ],
        "{table}"
    );
    // A run by hand, from the template, owned by the CronJob; not twice.
    let out = agent.ok(&["create", "job", "cron-manual", "--from=cronjob/cron-listed"]);
    assert_eq!(out.trim(), "job.batch/cron-manual created");
    let manual = agent.object("job", "cron-manual").expect("the Job");
    assert_eq!(manual["metadata"]["labels"]["cron"], "cron-listed");
    assert_eq!(
        manual["metadata"]["annotations"]["cronjob.kubernetes.io/instantiate"],
        "manual"
    );
    assert_eq!(
        manual["metadata"]["ownerReferences"][0]["name"],
        "cron-listed"
    );
    let again = agent.cli(&["create", "job", "cron-manual", "--from=cronjob/cron-listed"]);
    assert!(!again.status.success());
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("already exists"), "{stderr}");
    let wrong = agent.cli(&["create", "job", "cron-other", "--from=deployment/web"]);
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(stderr.contains("expected cronjob/NAME"), "{stderr}");
    assert!(agent.object("job", "cron-other").is_none());
}

#[test]
fn an_autoscaler_follows_cpu_use_up_and_back_down() {
    let agent = Agent::start_node(&["--usage-interval", "1s", "--hpa-sync-period", "1s"]);
    agent.apply(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: burner}
spec:
  replicas: 1
  selector: {matchLabels: {app: burner}}
  template:
    metadata: {labels: {app: burner}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: busybox:1.36
        command: ["sh", "-c", "while [ ! -f /stop ]; do :; done; exec sleep 3600"]
        resources: {requests: {cpu: 200m}}
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: burner}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: burner}
  minReplicas: 1
  maxReplicas: 3
  metrics:
  - type: Resource
    resource: {name: cpu, target: {type: Utilization, averageUtilization: 50}}
  behavior:
    scaleDown: {stabilizationWindowSeconds: 2}
"#,
    );
    // One pod burning a core is far over 50% of 200m: up to the maximum.
    let up = wait_object(
        &agent,
        "deployment",
        "burner",
        Duration::from_secs(60),
        |d| d.is_some_and(|d| d["spec"]["replicas"] == 3),
    )
    .expect("deployment");
    assert_eq!(up["spec"]["replicas"], 3);
    let hpa = agent.object("hpa", "burner").expect("hpa");
    let utilization =
        hpa["status"]["currentMetrics"][0]["resource"]["current"]["averageUtilization"]
            .as_i64()
            .unwrap_or(0);
    assert!(utilization > 50, "{}", hpa["status"]);
    // Every pod stops burning: back down to the minimum.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pods = pods_labelled(&agent, "app=burner");
        let running = pods.iter().filter(|p| {
            p["status"]["phase"] == "Running" && p["metadata"]["deletionTimestamp"].is_null()
        });
        for pod in running {
            let out = agent.exec(pod, "main", &["touch", "/stop"]);
            // A pod scaled down since the list has no container left to exec in.
            let name = pod["metadata"]["name"].as_str().expect("a pod name");
            let going = || {
                agent
                    .object("pod", name)
                    .is_none_or(|p| !p["metadata"]["deletionTimestamp"].is_null())
            };
            assert!(
                out.status.success() || going(),
                "touch /stop: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        if agent.object("deployment", "burner").expect("deployment")["spec"]["replicas"] == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never scaled down: {}",
            agent.object("hpa", "burner").expect("hpa")["status"]
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    let events = agent.ok(&["describe", "hpa", "burner"]);
    assert!(events.contains("SuccessfulRescale"), "{events}");
}

#[test]
fn a_silent_node_is_marked_unknown_tainted_and_loses_its_pods() {
    let agent = Agent::start_node(&[
        "--node-monitor-grace-period",
        "4s",
        "--node-heartbeat-interval",
        "1s",
    ]);
    // A node whose agent never reports, with pods bound to it.
    let pod = |name: &str, tolerations: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  nodeName: ghost\n  \
             tolerations: {tolerations}\n  containers:\n  - {{name: main, image: busybox:1.36}}\n---\n"
        )
    };
    agent.apply(&format!(
        "apiVersion: v1\nkind: Node\nmetadata: {{name: ghost}}\n---\n{}{}{}",
        pod("plain", "[]"),
        pod(
            "patient",
            "[{key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 3}]"
        ),
        pod("stubborn", "[{operator: Exists}]"),
    ));
    let lost = wait_object(&agent, "node", "ghost", Duration::from_secs(20), |n| {
        n.is_some_and(|n| {
            n["spec"]["taints"].as_array().is_some_and(|t| {
                t.iter()
                    .any(|t| t["key"] == "node.kubernetes.io/unreachable")
            })
        })
    })
    .expect("node");
    let ready = lost["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .expect("a Ready condition");
    assert_eq!(ready["status"], "Unknown", "{ready}");
    assert_eq!(ready["reason"], "NodeStatusUnknown", "{ready}");
    wait_object(&agent, "pod", "plain", Duration::from_secs(10), |p| {
        p.is_none()
    });
    wait_object(&agent, "pod", "patient", Duration::from_secs(15), |p| {
        p.is_none()
    });
    assert!(
        agent.object("pod", "stubborn").is_some(),
        "a pod tolerating every taint stays"
    );
    // The node whose agent reports stays Ready and untainted.
    let node = agent.object("node", NODE_NAME).expect("this node");
    assert!(
        node["spec"]["taints"]
            .as_array()
            .is_none_or(|t| t.is_empty()),
        "{node}"
    );
    // Its heartbeat is its Lease, renewed every second and owned by the Node
    // (the Node's status is written once a minute, longer than the grace
    // period), while the time it became Ready stays.
    let lease = || agent.node_lease(NODE_NAME).expect("the node's lease");
    let renewed = lease();
    assert_eq!(renewed["spec"]["holderIdentity"], NODE_NAME);
    assert_eq!(renewed["metadata"]["ownerReferences"][0]["kind"], "Node");
    assert_eq!(
        renewed["metadata"]["ownerReferences"][0]["uid"],
        node["metadata"]["uid"]
    );
    let ready = condition(&node, "Ready").expect("Ready").clone();
    std::thread::sleep(Duration::from_secs(3));
    assert_ne!(lease()["spec"]["renewTime"], renewed["spec"]["renewTime"]);
    let later = agent.object("node", NODE_NAME).expect("this node");
    let ready_later = condition(&later, "Ready").expect("still Ready");
    assert_eq!(
        ready_later["lastTransitionTime"],
        ready["lastTransitionTime"]
    );
}
