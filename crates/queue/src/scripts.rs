//! The Lua scripts: one file per atomic state transition, loaded once per Redis and
//! called by SHA (redis-rs sends EVALSHA and loads the script on NOSCRIPT, e.g. after a
//! Redis restart).
//!
//! Every script starts with a `#!lua` line (Redis 7.0 script flags). Without it Redis checks
//! `maxmemory` command by command, so a script refused half-way would keep its deletes and
//! lose its writes: an entry taken off a list and never put anywhere. With it, a writing
//! script is refused as a whole while Redis is out of memory, and the worker retries it.
//! `allow-oom` marks the scripts that only free memory (ack, purge, expire), so they still
//! run then; `no-writes` marks the read-only ones.

use std::sync::LazyLock;

use redis::Script;

pub(crate) struct Scripts {
    pub push: Script,
    pub fetch: Script,
    pub ack: Script,
    pub retry: Script,
    pub defer: Script,
    pub dead: Script,
    pub recover: Script,
    pub handback: Script,
    pub promote: Script,
    pub replay: Script,
    pub purge: Script,
    pub expire_dead: Script,
    pub record_start: Script,
    pub record_finish: Script,
    pub record_requeue: Script,
    pub record_dead: Script,
    pub heartbeat: Script,
    pub expired_workers: Script,
    pub release: Script,
}

pub(crate) static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    push: Script::new(include_str!("lua/push.lua")),
    fetch: Script::new(include_str!("lua/fetch.lua")),
    ack: Script::new(include_str!("lua/ack.lua")),
    retry: Script::new(include_str!("lua/retry.lua")),
    defer: Script::new(include_str!("lua/defer.lua")),
    dead: Script::new(include_str!("lua/dead.lua")),
    recover: Script::new(include_str!("lua/recover.lua")),
    handback: Script::new(include_str!("lua/handback.lua")),
    promote: Script::new(include_str!("lua/promote.lua")),
    replay: Script::new(include_str!("lua/replay.lua")),
    purge: Script::new(include_str!("lua/purge.lua")),
    expire_dead: Script::new(include_str!("lua/expire_dead.lua")),
    record_start: Script::new(include_str!("lua/record_start.lua")),
    record_finish: Script::new(include_str!("lua/record_finish.lua")),
    record_requeue: Script::new(include_str!("lua/record_requeue.lua")),
    record_dead: Script::new(include_str!("lua/record_dead.lua")),
    heartbeat: Script::new(include_str!("lua/heartbeat.lua")),
    expired_workers: Script::new(include_str!("lua/expired_workers.lua")),
    release: Script::new(include_str!("lua/release.lua")),
});
