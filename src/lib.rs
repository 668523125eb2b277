pub mod domain;
pub mod secret;
pub mod store;
