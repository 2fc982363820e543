//! The autoscaler's arithmetic, as Kubernetes' replica calculator and its
//! behavior rules do it, on plain data: how many replicas one metric asks for,
//! then the stabilisation window and the rate policies applied over the history.

use std::collections::VecDeque;

/// One pod of the target, as the autoscaler sees it for one resource.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PodSample {
    /// Ready (a pod not yet ready is left out when scaling up).
    pub ready: bool,
    /// The pod's request of the resource (sum over containers), when every
    /// container has one.
    pub request: Option<i128>,
    /// Its last sampled use, when its node has published one.
    pub usage: Option<i128>,
}

/// What the target is held to: a percent of requests, or an amount per pod.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Target {
    Utilization(i32),
    AverageValue(i128),
}

/// Within this fraction of the target, nothing changes (Kubernetes' default).
const TOLERANCE: f64 = 0.1;

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum Unavailable {
    #[error("no pod of the target has published usage yet")]
    NoMetrics,
    #[error("a pod of the target has no request for {0}, so its utilization is unknown")]
    MissingRequest(String),
}

/// One metric's answer: the replicas it asks for and the current value
/// (utilization percent, or average usage) to report in status.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Recommendation {
    pub replicas: i32,
    pub current: i128,
}

/// The replicas `target` asks for, given the target's `current` replica count and
/// its pods. Pods without usage count as using their whole request when scaling
/// down and nothing when scaling up, and pods not yet ready as using nothing when
/// scaling up, so missing data never makes the change larger.
pub fn replicas_for(
    resource: &str,
    current: i32,
    target: Target,
    pods: &[PodSample],
) -> Result<Recommendation, Unavailable> {
    let measured: Vec<&PodSample> = pods
        .iter()
        .filter(|p| p.ready && p.usage.is_some())
        .collect();
    if measured.is_empty() {
        return Err(Unavailable::NoMetrics);
    }
    let request = |p: &PodSample| {
        p.request
            .filter(|r| *r > 0)
            .ok_or_else(|| Unavailable::MissingRequest(resource.to_string()))
    };
    // Usage over goal, for a set of (usage, request) pairs.
    let ratio = |pairs: &[(i128, i128)]| -> (f64, i128) {
        let usage: i128 = pairs.iter().map(|(u, _)| u).sum();
        let requests: i128 = pairs.iter().map(|(_, r)| r).sum();
        match target {
            Target::Utilization(percent) => {
                let utilization = usage * 100 / requests.max(1);
                (utilization as f64 / f64::from(percent), utilization)
            }
            Target::AverageValue(goal) => {
                let average = usage / pairs.len().max(1) as i128;
                (average as f64 / goal.max(1) as f64, average)
            }
        }
    };
    let mut pairs = Vec::with_capacity(pods.len());
    for pod in &measured {
        let request = match target {
            Target::Utilization(_) => request(pod)?,
            Target::AverageValue(_) => 0,
        };
        pairs.push((pod.usage.unwrap_or(0), request));
    }
    let (usage_ratio, current_value) = ratio(&pairs);
    let unmeasured: Vec<&PodSample> = pods.iter().filter(|p| p.usage.is_none()).collect();
    let unready: Vec<&PodSample> = pods
        .iter()
        .filter(|p| !p.ready && p.usage.is_some())
        .collect();
    let keep = Recommendation {
        replicas: current,
        current: current_value,
    };
    if unmeasured.is_empty() && unready.is_empty() {
        if (usage_ratio - 1.0).abs() <= TOLERANCE {
            return Ok(keep);
        }
        return Ok(Recommendation {
            replicas: (usage_ratio * pairs.len() as f64).ceil() as i32,
            current: current_value,
        });
    }
    let scaling_up = usage_ratio > 1.0;
    for pod in unmeasured {
        let request = match target {
            Target::Utilization(_) => request(pod)?,
            Target::AverageValue(goal) => goal,
        };
        pairs.push((if scaling_up { 0 } else { request }, request.max(0)));
    }
    if scaling_up {
        for pod in unready {
            let request = match target {
                Target::Utilization(_) => request(pod)?,
                Target::AverageValue(_) => 0,
            };
            pairs.push((0, request));
        }
    }
    let (new_ratio, _) = ratio(&pairs);
    if (new_ratio - 1.0).abs() <= TOLERANCE || (new_ratio > 1.0) != scaling_up {
        return Ok(keep);
    }
    Ok(Recommendation {
        replicas: (new_ratio * pairs.len() as f64).ceil() as i32,
        current: current_value,
    })
}

/// A limit on change per period.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Policy {
    Pods { value: i32, period_seconds: i64 },
    Percent { value: i32, period_seconds: i64 },
}

impl Policy {
    fn period(self) -> i64 {
        match self {
            Policy::Pods { period_seconds, .. } | Policy::Percent { period_seconds, .. } => {
                period_seconds
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Select {
    Max,
    Min,
    Disabled,
}

/// One direction's behaviour (Kubernetes' defaults in [`Rules::default_up`] and
/// [`Rules::default_down`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Rules {
    pub stabilization_seconds: i64,
    pub select: Select,
    pub policies: Vec<Policy>,
}

impl Rules {
    /// Up at once, by at most 4 pods or 100% (whichever is more) per 15 s.
    pub fn default_up() -> Self {
        Self {
            stabilization_seconds: 0,
            select: Select::Max,
            policies: vec![
                Policy::Pods {
                    value: 4,
                    period_seconds: 15,
                },
                Policy::Percent {
                    value: 100,
                    period_seconds: 15,
                },
            ],
        }
    }

    /// Down after 5 minutes of lower recommendations, by up to 100% per 15 s.
    pub fn default_down() -> Self {
        Self {
            stabilization_seconds: 300,
            select: Select::Max,
            policies: vec![Policy::Percent {
                value: 100,
                period_seconds: 15,
            }],
        }
    }
}

/// What one autoscaler remembers between passes: its recent recommendations
/// (for stabilisation) and scale changes (for the rate policies), with unix
/// seconds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct History {
    recommendations: VecDeque<(i64, i32)>,
    changes: VecDeque<(i64, i32)>,
}

/// The bounds and rules the recommendation is held to.
#[derive(Clone, Debug, PartialEq)]
pub struct Behavior {
    pub min_replicas: i32,
    pub max_replicas: i32,
    pub up: Rules,
    pub down: Rules,
}

impl History {
    /// The replica count to set now, given the raw recommendation; records both.
    pub fn decide(&mut self, now: i64, current: i32, recommended: i32, behavior: &Behavior) -> i32 {
        let longest = behavior
            .up
            .stabilization_seconds
            .max(behavior.down.stabilization_seconds)
            .max(
                behavior
                    .up
                    .policies
                    .iter()
                    .chain(&behavior.down.policies)
                    .map(|p| p.period())
                    .max()
                    .unwrap_or(0),
            );
        self.recommendations.retain(|(t, _)| now - t <= longest);
        self.changes.retain(|(t, _)| now - t <= longest);
        self.recommendations.push_back((now, recommended));
        // Stabilisation: up no further than the lowest recent recommendation, down
        // no further than the highest.
        let within = |seconds: i64| {
            self.recommendations
                .iter()
                .filter(move |(t, _)| now - t <= seconds)
                .map(|(_, r)| *r)
        };
        let up_to = within(behavior.up.stabilization_seconds)
            .min()
            .unwrap_or(recommended);
        let down_to = within(behavior.down.stabilization_seconds)
            .max()
            .unwrap_or(recommended);
        let mut desired = current;
        if up_to > current {
            desired = up_to.min(self.limit(now, current, &behavior.up, true));
        } else if down_to < current {
            desired = down_to.max(self.limit(now, current, &behavior.down, false));
        }
        let desired = desired.clamp(behavior.min_replicas, behavior.max_replicas);
        if desired != current {
            self.changes.push_back((now, desired - current));
        }
        desired
    }

    /// How far the policies let the count move from `current` in this direction.
    fn limit(&self, now: i64, current: i32, rules: &Rules, up: bool) -> i32 {
        if rules.select == Select::Disabled {
            return current;
        }
        let limits = rules.policies.iter().map(|policy| {
            // The count at the start of the policy's period.
            let changed: i32 = self
                .changes
                .iter()
                .filter(|(t, change)| now - t < policy.period() && (*change > 0) == up)
                .map(|(_, change)| change)
                .sum();
            let start = current - changed;
            match (*policy, up) {
                (Policy::Pods { value, .. }, true) => start + value,
                (Policy::Pods { value, .. }, false) => start - value,
                (Policy::Percent { value, .. }, true) => {
                    (f64::from(start) * (1.0 + f64::from(value) / 100.0)).ceil() as i32
                }
                (Policy::Percent { value, .. }, false) => {
                    (f64::from(start) * (1.0 - f64::from(value) / 100.0)).floor() as i32
                }
            }
        });
        // Max lets the largest change through: the highest limit up, the lowest down.
        let pick_largest = rules.select == Select::Max;
        let limit = if pick_largest == up {
            limits.max()
        } else {
            limits.min()
        };
        limit.unwrap_or(current)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(request: i128, usage: i128) -> PodSample {
        PodSample {
            ready: true,
            request: Some(request),
            usage: Some(usage),
        }
    }

    #[test]
    fn replicas_follow_utilization_over_target() {
        // Two pods at 90% of 100m against a 50% target: ceil(2 * 1.8) = 4.
        let pods = [pod(100, 90), pod(100, 90)];
        let r = replicas_for("cpu", 2, Target::Utilization(50), &pods).expect("metrics");
        assert_eq!(
            r,
            Recommendation {
                replicas: 4,
                current: 90
            }
        );
        // Within 10% of the target nothing changes.
        let pods = [pod(100, 52), pod(100, 54)];
        let r = replicas_for("cpu", 2, Target::Utilization(50), &pods).expect("metrics");
        assert_eq!(r.replicas, 2);
        // Idle pods ask for fewer.
        let pods = [pod(100, 1), pod(100, 1), pod(100, 1), pod(100, 1)];
        let r = replicas_for("cpu", 4, Target::Utilization(50), &pods).expect("metrics");
        assert_eq!(r.replicas, 1);
    }

    #[test]
    fn missing_data_never_enlarges_the_change() {
        let unmeasured = PodSample {
            ready: true,
            request: Some(100),
            usage: None,
        };
        // Scaling up: the unmeasured pod counts as idle: ratio (180/300)/0.5 = 1.2.
        let pods = [pod(100, 90), pod(100, 90), unmeasured];
        let r = replicas_for("cpu", 3, Target::Utilization(50), &pods).expect("metrics");
        assert_eq!(r.replicas, 4);
        // Scaling down: it counts as fully used: (10 + 100) / 200 = 55% of 50%: keep.
        let pods = [pod(100, 10), unmeasured];
        let r = replicas_for("cpu", 2, Target::Utilization(50), &pods).expect("metrics");
        assert_eq!(r.replicas, 2);
    }

    #[test]
    fn no_usage_or_no_request_is_an_error_naming_it() {
        let unmeasured = PodSample {
            ready: true,
            request: Some(100),
            usage: None,
        };
        assert_eq!(
            replicas_for("cpu", 1, Target::Utilization(50), &[unmeasured]),
            Err(Unavailable::NoMetrics)
        );
        let no_request = PodSample {
            ready: true,
            request: None,
            usage: Some(5),
        };
        let err =
            replicas_for("cpu", 1, Target::Utilization(50), &[no_request]).expect_err("no request");
        assert_eq!(
            err.to_string(),
            "a pod of the target has no request for cpu, so its utilization is unknown"
        );
        // An absolute target needs no request.
        let r =
            replicas_for("memory", 1, Target::AverageValue(10), &[no_request]).expect("metrics");
        assert_eq!(r.replicas, 1);
    }

    fn behavior(down_window: i64) -> Behavior {
        Behavior {
            min_replicas: 1,
            max_replicas: 10,
            up: Rules::default_up(),
            down: Rules {
                stabilization_seconds: down_window,
                ..Rules::default_down()
            },
        }
    }

    #[test]
    fn scale_down_waits_for_the_stabilisation_window() {
        let mut history = History::default();
        let b = behavior(60);
        assert_eq!(history.decide(0, 4, 4, &b), 4);
        // Lower recommendations are held back while a higher one is in the window.
        assert_eq!(history.decide(30, 4, 1, &b), 4);
        assert_eq!(history.decide(59, 4, 1, &b), 4);
        assert_eq!(history.decide(61, 4, 1, &b), 1);
    }

    #[test]
    fn scale_up_is_limited_per_period_and_clamped() {
        let mut history = History::default();
        let b = behavior(0);
        // From 1: at most max(1 + 4, 1 * 2) = 5 per 15 s.
        assert_eq!(history.decide(0, 1, 9, &b), 5);
        // Within the same period the limit counts what already happened.
        assert_eq!(history.decide(5, 5, 9, &b), 5);
        // A new period allows more; max_replicas caps it.
        assert_eq!(history.decide(20, 5, 30, &b), 10);
        // Disabled scale-down never goes down.
        let frozen = Behavior {
            down: Rules {
                select: Select::Disabled,
                ..Rules::default_down()
            },
            ..behavior(0)
        };
        assert_eq!(History::default().decide(0, 5, 1, &frozen), 5);
    }
}
