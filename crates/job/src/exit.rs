//! Exit codes of every agentfleet binary: one meaning each (README, "Exit codes"). Values
//! above 2 follow BSD `sysexits.h`.

/// Success (for `wait`: every task is done).
pub const OK: u8 = 0;
/// `wait`: a task is dead.
pub const TASK_DEAD: u8 = 1;
/// `wait`: timed out before every task finished.
pub const TIMED_OUT: u8 = 2;
/// A task or dead letter id that does not exist (never created, expired, purged).
pub const NOT_FOUND: u8 = 3;
/// Usage error: bad flags or values, an unreadable or invalid input file, input over a size
/// limit (`EX_USAGE`).
pub const USAGE: u8 = 64;
/// Redis unreachable, or it refused us: TLS, password, ACL (`EX_UNAVAILABLE`).
pub const REDIS_UNAVAILABLE: u8 = 69;
/// Anything else: unreadable stored data, a failed write to stdout, a bug (`EX_SOFTWARE`).
pub const INTERNAL: u8 = 70;
