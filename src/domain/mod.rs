//! The farm's rules, free of I/O: account states, which account serves the
//! next request, when a token is refreshed, how long to back off.
//!
//! Nothing in here reads a clock, a socket, a file or a random number
//! generator: every function takes `now` (and any randomness) as an argument,
//! so every rule is unit-tested directly.

pub mod account;
pub mod digest;
pub mod identity;
pub mod job;
pub mod provider;
pub mod rate;
pub mod ratelimit;
pub mod recovery;
pub mod rotation;
pub mod timing;

pub use account::{Account, AccountId, AuthState, DisplayState, LastError, Tokens};
pub use job::Job;
pub use rate::{Bucket, Rate};
pub use rotation::{Choice, Rotation, Strategy};
