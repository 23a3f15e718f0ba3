//! Delivery on the application's threads: completion queues and what they run.

pub mod queue;
