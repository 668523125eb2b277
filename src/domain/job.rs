//! What the scheduler runs for an account: named here, below the farm and
//! the metrics, because the scheduler starts jobs, the farm backs off a
//! panicked one, and `/metrics` counts them.

/// What the scheduler runs for an account.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Job {
    Refresh = 0,
    /// The recovery ladder's browser rung.
    Relogin = 1,
}

impl Job {
    pub const ALL: [Job; 2] = [Job::Refresh, Job::Relogin];

    pub fn as_str(self) -> &'static str {
        match self {
            Job::Refresh => "refresh",
            Job::Relogin => "relogin",
        }
    }
}
