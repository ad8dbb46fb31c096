//! 64 concurrent subscriptions: 48 students (limit 2) race for the 10 seats
//! of `algebra`, while `eve` (limit 3) tries 16 courses at once, `algebra`
//! among them. No course may exceed its seats, no student their limit.

use std::collections::BTreeMap;

use dcb_core::DecisionError;
use patterns::course_subscriptions::{
    DefineCourse, RegisterStudent, Subscribe, SubscriptionError, SubscriptionEvent,
};

use crate::race::{report, Env, Guard, Raced};

const SEATS: u32 = 10;
const STUDENTS: usize = 48;
const STUDENT_LIMIT: u32 = 2;
const EVE_LIMIT: u32 = 3;
const EVE_COURSES: usize = 16;
const CALLERS: usize = STUDENTS + EVE_COURSES;

fn eve_course(n: usize) -> String {
    if n == 0 {
        "algebra".to_owned()
    } else {
        format!("course-{n:02}")
    }
}

/// What the log says, and which rules it breaks.
struct Checked {
    per_course: BTreeMap<String, u32>,
    per_student: BTreeMap<String, u32>,
    violations: Vec<String>,
}

fn check(log: &[SubscriptionEvent]) -> Checked {
    let mut seats = BTreeMap::new();
    let mut limits = BTreeMap::new();
    let mut per_course = BTreeMap::new();
    let mut per_student = BTreeMap::new();
    for event in log {
        match event {
            SubscriptionEvent::CourseDefined { course, seats: n } => {
                seats.insert(course.clone(), *n);
            }
            SubscriptionEvent::StudentRegistered {
                student,
                max_courses,
            } => {
                limits.insert(student.clone(), *max_courses);
            }
            SubscriptionEvent::StudentSubscribed { course, student } => {
                *per_course.entry(course.clone()).or_insert(0) += 1;
                *per_student.entry(student.clone()).or_insert(0) += 1;
            }
            SubscriptionEvent::StudentUnsubscribed { .. } => unreachable!("nobody unsubscribes"),
        }
    }
    let mut violations = Vec::new();
    for (course, taken) in &per_course {
        if *taken > seats[course] {
            violations.push(format!("{course}: {taken} of {} seats", seats[course]));
        }
    }
    for (student, courses) in &per_student {
        if *courses > limits[student] {
            violations.push(format!(
                "{student}: {courses} of {} courses",
                limits[student]
            ));
        }
    }
    Checked {
        per_course,
        per_student,
        violations,
    }
}

async fn subscription_race(guard: Guard) -> Checked {
    let env = Env::new().await;
    let maker = env.maker();
    for n in 0..EVE_COURSES {
        maker
            .make(DefineCourse {
                course: eve_course(n),
                seats: SEATS,
            })
            .await
            .expect("course defined");
    }
    for s in 0..STUDENTS {
        maker
            .make(RegisterStudent {
                student: format!("student-{s:02}"),
                max_courses: STUDENT_LIMIT,
            })
            .await
            .expect("student registered");
    }
    maker
        .make(RegisterStudent {
            student: "eve".into(),
            max_courses: EVE_LIMIT,
        })
        .await
        .expect("eve registered");

    let Raced { outcomes, counts } = env
        .race(guard, CALLERS, |racer| async move {
            let decision = if racer.index < STUDENTS {
                Subscribe {
                    course: "algebra".into(),
                    student: format!("student-{:02}", racer.index),
                }
            } else {
                Subscribe {
                    course: eve_course(racer.index - STUDENTS),
                    student: "eve".into(),
                }
            };
            racer.maker.make(decision).await
        })
        .await;

    let mut successes = 0;
    let mut rejected = 0;
    for outcome in &outcomes {
        match outcome {
            Ok(_) => successes += 1,
            Err(DecisionError::Rejected(
                SubscriptionError::CourseFull { .. } | SubscriptionError::CourseLimitReached { .. },
            )) => rejected += 1,
            Err(other) => panic!("unexpected outcome: {other}"),
        }
    }
    let log: Vec<SubscriptionEvent> = env.log().await.into_iter().map(|e| e.event).collect();
    let checked = check(&log);
    let subscribed: u32 = checked.per_course.values().sum();
    assert_eq!(
        successes, subscribed as usize,
        "every success is in the log"
    );
    report(
        "course subscriptions",
        guard,
        &counts,
        successes,
        rejected,
        &format!(
            "checked {subscribed} subscriptions: algebra {} of {SEATS} seats, eve {} of \
             {EVE_LIMIT} courses, {} rule(s) broken",
            checked.per_course.get("algebra").unwrap_or(&0),
            checked.per_student.get("eve").unwrap_or(&0),
            checked.violations.len(),
        ),
    );
    if guard == Guard::Kept {
        assert!(
            counts.conflicts > 0,
            "the callers raced (all read before any appended)"
        );
    }
    env.cleanup().await;
    checked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_subscriptions_never_exceed_seats_or_student_limits() {
    let checked = subscription_race(Guard::Kept).await;
    assert_eq!(checked.violations, Vec::<String>::new());
    // Exactly full: losers retried until the rule, not the race, said no.
    assert_eq!(checked.per_course["algebra"], SEATS);
    assert_eq!(checked.per_student["eve"], EVE_LIMIT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_the_append_condition_the_course_and_the_student_overfill() {
    let checked = subscription_race(Guard::Dropped).await;
    assert!(
        checked.violations.iter().any(|v| v.starts_with("algebra"))
            && checked.violations.iter().any(|v| v.starts_with("eve")),
        "dropping the condition must break both rules, got {:?}",
        checked.violations
    );
}
