//! Course subscriptions: a decision over two boundaries at once.
//!
//! **Rule.** A course has a number of seats; a student may follow a limited
//! number of courses. Subscribing a student to a course must respect both.
//!
//! **Boundary.** `course:<id>` (the course's definition and its
//! subscriptions) and `student:<id>` (the student's registration and
//! subscriptions). [`Subscribe`] reads both as a tuple state
//! `(CourseSeats, StudentCourses)`; its append condition covers both, so a
//! concurrent subscription to the same course *or* by the same student makes
//! it read again, while subscriptions of other students to other courses
//! never conflict with it.
//!
//! **Why aggregates struggle.** A subscription belongs to the course and to
//! the student at once. With a `Course` aggregate and a `Student` aggregate,
//! one of the two rules is checked in a different transaction than the
//! other (a saga with compensations), or a third aggregate is invented to
//! hold both, which then serializes every subscription of the school.

use std::collections::BTreeSet;

use dcb_core::{Decision, Event, StateMutate, StateQuery};

/// Every event of the pattern.
///
/// `StudentSubscribed` and `StudentUnsubscribed` carry both ids, so they are
/// in both streams: the course counts them as seats, the student as courses.
#[derive(Event, Debug, Clone, PartialEq, Eq)]
#[stream(
    CourseStream,
    [CourseDefined, StudentSubscribed, StudentUnsubscribed]
)]
#[stream(
    StudentStream,
    [StudentRegistered, StudentSubscribed, StudentUnsubscribed]
)]
pub enum SubscriptionEvent {
    /// A course was offered with a number of seats.
    CourseDefined {
        /// The course.
        #[id]
        course: String,
        /// Seats in total.
        seats: u32,
    },
    /// A student was registered with the most courses they may follow.
    StudentRegistered {
        /// The student.
        #[id]
        student: String,
        /// Courses at most at the same time.
        max_courses: u32,
    },
    /// A student took a seat in a course.
    StudentSubscribed {
        /// The course.
        #[id]
        course: String,
        /// The student.
        #[id]
        student: String,
    },
    /// A student gave their seat back.
    StudentUnsubscribed {
        /// The course.
        #[id]
        course: String,
        /// The student.
        #[id]
        student: String,
    },
}

/// A broken subscription rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SubscriptionError {
    /// The course was defined before.
    #[error("the course is already defined")]
    CourseAlreadyDefined,
    /// The student was registered before.
    #[error("the student is already registered")]
    StudentAlreadyRegistered,
    /// No such course.
    #[error("the course does not exist")]
    NoSuchCourse,
    /// No such student.
    #[error("the student is not registered")]
    NoSuchStudent,
    /// The student already holds a seat in the course.
    #[error("the student is already subscribed to the course")]
    AlreadySubscribed,
    /// The student holds no seat in the course.
    #[error("the student is not subscribed to the course")]
    NotSubscribed,
    /// Every seat is taken.
    #[error("the course is full ({seats} seats)")]
    CourseFull {
        /// The course's seats.
        seats: u32,
    },
    /// The student follows as many courses as they may.
    #[error("the student already follows {max_courses} courses")]
    CourseLimitReached {
        /// The student's limit.
        max_courses: u32,
    },
}

/// The seats of one course: folded from `course:<id>`.
#[derive(StateQuery, Clone, Debug, PartialEq, Eq)]
#[state_query(CourseStream)]
pub struct CourseSeats {
    #[id]
    course: String,
    seats: Option<u32>,
    subscribers: BTreeSet<String>,
}

impl CourseSeats {
    /// The state of `course` before any event.
    pub fn new(course: &str) -> Self {
        CourseSeats {
            course: course.to_owned(),
            seats: None,
            subscribers: BTreeSet::new(),
        }
    }
}

impl StateMutate for CourseSeats {
    fn mutate(&mut self, event: CourseStream) {
        match event {
            CourseStream::CourseDefined { seats, .. } => self.seats = Some(seats),
            CourseStream::StudentSubscribed { student, .. } => {
                self.subscribers.insert(student);
            }
            CourseStream::StudentUnsubscribed { student, .. } => {
                self.subscribers.remove(&student);
            }
        }
    }
}

/// The courses of one student: folded from `student:<id>`.
#[derive(StateQuery, Clone, Debug, PartialEq, Eq)]
#[state_query(StudentStream)]
pub struct StudentCourses {
    #[id]
    student: String,
    max_courses: Option<u32>,
    courses: BTreeSet<String>,
}

impl StudentCourses {
    /// The state of `student` before any event.
    pub fn new(student: &str) -> Self {
        StudentCourses {
            student: student.to_owned(),
            max_courses: None,
            courses: BTreeSet::new(),
        }
    }
}

impl StateMutate for StudentCourses {
    fn mutate(&mut self, event: StudentStream) {
        match event {
            StudentStream::StudentRegistered { max_courses, .. } => {
                self.max_courses = Some(max_courses)
            }
            StudentStream::StudentSubscribed { course, .. } => {
                self.courses.insert(course);
            }
            StudentStream::StudentUnsubscribed { course, .. } => {
                self.courses.remove(&course);
            }
        }
    }
}

/// Offers a course with `seats` seats.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DefineCourse {
    /// The course.
    pub course: String,
    /// Seats in total.
    pub seats: u32,
}

impl Decision for DefineCourse {
    type Event = SubscriptionEvent;
    type StateQuery = CourseSeats;
    type Error = SubscriptionError;

    fn state_query(&self) -> CourseSeats {
        CourseSeats::new(&self.course)
    }

    fn process(&self, course: &CourseSeats) -> Result<Vec<SubscriptionEvent>, SubscriptionError> {
        if course.seats.is_some() {
            return Err(SubscriptionError::CourseAlreadyDefined);
        }
        Ok(vec![SubscriptionEvent::CourseDefined {
            course: self.course.clone(),
            seats: self.seats,
        }])
    }
}

/// Registers a student who may follow `max_courses` courses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegisterStudent {
    /// The student.
    pub student: String,
    /// Courses at most.
    pub max_courses: u32,
}

impl Decision for RegisterStudent {
    type Event = SubscriptionEvent;
    type StateQuery = StudentCourses;
    type Error = SubscriptionError;

    fn state_query(&self) -> StudentCourses {
        StudentCourses::new(&self.student)
    }

    fn process(
        &self,
        student: &StudentCourses,
    ) -> Result<Vec<SubscriptionEvent>, SubscriptionError> {
        if student.max_courses.is_some() {
            return Err(SubscriptionError::StudentAlreadyRegistered);
        }
        Ok(vec![SubscriptionEvent::StudentRegistered {
            student: self.student.clone(),
            max_courses: self.max_courses,
        }])
    }
}

/// Gives `student` a seat in `course`: the decision over two boundaries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscribe {
    /// The course.
    pub course: String,
    /// The student.
    pub student: String,
}

impl Decision for Subscribe {
    type Event = SubscriptionEvent;
    /// A tuple state: one read of the union of both queries, each event
    /// folded into the members whose query it matches.
    type StateQuery = (CourseSeats, StudentCourses);
    type Error = SubscriptionError;

    fn state_query(&self) -> (CourseSeats, StudentCourses) {
        (
            CourseSeats::new(&self.course),
            StudentCourses::new(&self.student),
        )
    }

    fn process(
        &self,
        (course, student): &(CourseSeats, StudentCourses),
    ) -> Result<Vec<SubscriptionEvent>, SubscriptionError> {
        let seats = course.seats.ok_or(SubscriptionError::NoSuchCourse)?;
        let max_courses = student
            .max_courses
            .ok_or(SubscriptionError::NoSuchStudent)?;
        if course.subscribers.contains(&self.student) {
            return Err(SubscriptionError::AlreadySubscribed);
        }
        if course.subscribers.len() >= seats as usize {
            return Err(SubscriptionError::CourseFull { seats });
        }
        if student.courses.len() >= max_courses as usize {
            return Err(SubscriptionError::CourseLimitReached { max_courses });
        }
        Ok(vec![SubscriptionEvent::StudentSubscribed {
            course: self.course.clone(),
            student: self.student.clone(),
        }])
    }
}

/// Gives `student`'s seat in `course` back. The course's subscribers say
/// whether there is a seat to give back, so one boundary is enough.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unsubscribe {
    /// The course.
    pub course: String,
    /// The student.
    pub student: String,
}

impl Decision for Unsubscribe {
    type Event = SubscriptionEvent;
    type StateQuery = CourseSeats;
    type Error = SubscriptionError;

    fn state_query(&self) -> CourseSeats {
        CourseSeats::new(&self.course)
    }

    fn process(&self, course: &CourseSeats) -> Result<Vec<SubscriptionEvent>, SubscriptionError> {
        if !course.subscribers.contains(&self.student) {
            return Err(SubscriptionError::NotSubscribed);
        }
        Ok(vec![SubscriptionEvent::StudentUnsubscribed {
            course: self.course.clone(),
            student: self.student.clone(),
        }])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dcb_core::testing::TestHarness;
    use SubscriptionEvent::*;

    fn course(course: &str, seats: u32) -> SubscriptionEvent {
        CourseDefined {
            course: course.into(),
            seats,
        }
    }

    fn student(student: &str, max_courses: u32) -> SubscriptionEvent {
        StudentRegistered {
            student: student.into(),
            max_courses,
        }
    }

    fn subscribed(course: &str, student: &str) -> SubscriptionEvent {
        StudentSubscribed {
            course: course.into(),
            student: student.into(),
        }
    }

    fn unsubscribed(course: &str, student: &str) -> SubscriptionEvent {
        StudentUnsubscribed {
            course: course.into(),
            student: student.into(),
        }
    }

    fn subscribe(course: &str, student: &str) -> Subscribe {
        Subscribe {
            course: course.into(),
            student: student.into(),
        }
    }

    #[test]
    fn a_registered_student_takes_a_free_seat() {
        TestHarness::given([course("algebra", 2), student("ann", 2)])
            .when(subscribe("algebra", "ann"))
            .then([subscribed("algebra", "ann")]);
    }

    #[test]
    fn a_full_course_takes_no_one() {
        TestHarness::given([
            course("algebra", 2),
            student("ann", 2),
            student("bob", 2),
            student("cid", 2),
            subscribed("algebra", "bob"),
            subscribed("algebra", "cid"),
        ])
        .when(subscribe("algebra", "ann"))
        .then_err(SubscriptionError::CourseFull { seats: 2 });
    }

    #[test]
    fn a_student_at_their_limit_takes_no_more_courses() {
        TestHarness::given([
            course("algebra", 10),
            course("biology", 10),
            course("chemistry", 10),
            student("ann", 2),
            subscribed("biology", "ann"),
            subscribed("chemistry", "ann"),
        ])
        .when(subscribe("algebra", "ann"))
        .then_err(SubscriptionError::CourseLimitReached { max_courses: 2 });
    }

    #[test]
    fn giving_a_seat_back_frees_it_for_the_course_and_the_student() {
        TestHarness::given([
            course("algebra", 1),
            course("biology", 1),
            student("ann", 1),
            student("bob", 1),
            subscribed("algebra", "bob"),
            subscribed("biology", "ann"),
            unsubscribed("algebra", "bob"),
            unsubscribed("biology", "ann"),
        ])
        .when(subscribe("algebra", "ann"))
        .then([subscribed("algebra", "ann")]);
    }

    #[test]
    fn other_courses_and_students_do_not_count() {
        TestHarness::given([
            course("algebra", 1),
            course("biology", 1),
            student("ann", 1),
            student("bob", 1),
            subscribed("biology", "bob"),
        ])
        .when(subscribe("algebra", "ann"))
        .then([subscribed("algebra", "ann")]);
    }

    #[test]
    fn the_same_seat_is_not_taken_twice() {
        TestHarness::given([
            course("algebra", 5),
            student("ann", 5),
            subscribed("algebra", "ann"),
        ])
        .when(subscribe("algebra", "ann"))
        .then_err(SubscriptionError::AlreadySubscribed);
    }

    #[test]
    fn unknown_courses_and_students_are_refused() {
        TestHarness::given([student("ann", 1)])
            .when(subscribe("algebra", "ann"))
            .then_err(SubscriptionError::NoSuchCourse);
        TestHarness::given([course("algebra", 1)])
            .when(subscribe("algebra", "ann"))
            .then_err(SubscriptionError::NoSuchStudent);
    }

    #[test]
    fn only_a_subscriber_gives_a_seat_back() {
        TestHarness::given([course("algebra", 1), student("ann", 1)])
            .when(Unsubscribe {
                course: "algebra".into(),
                student: "ann".into(),
            })
            .then_err(SubscriptionError::NotSubscribed);
    }

    #[test]
    fn courses_and_students_are_defined_once() {
        TestHarness::given([course("algebra", 1)])
            .when(DefineCourse {
                course: "algebra".into(),
                seats: 3,
            })
            .then_err(SubscriptionError::CourseAlreadyDefined);
        TestHarness::given([student("ann", 1)])
            .when(RegisterStudent {
                student: "ann".into(),
                max_courses: 3,
            })
            .then_err(SubscriptionError::StudentAlreadyRegistered);
    }
}
