//! The Lua scripts: one file per atomic state transition, loaded once per Redis and
//! called by SHA (redis-rs sends EVALSHA and loads the script on NOSCRIPT, e.g. after a
//! Redis restart).
//!
//! Each script is assembled at build time: its flags line, the shared helpers of
//! `lua/lib/prelude.lua` (Redis's time, the attempt prefix, chunked pushes), then its file.
//!
//! Every script starts with a `#!lua` line (Redis 7.0 script flags). Without it Redis checks
//! `maxmemory` command by command, so a script refused half-way would keep its deletes and
//! lose its writes: an entry taken off a list and never put anywhere. With it, a writing
//! script is refused as a whole while Redis is out of memory, and the worker retries it.
//! `allow-oom` marks the scripts that only free memory (ack, purge, expire), so they still
//! run then; `no-writes` marks the read-only ones.

use std::sync::LazyLock;

use redis::Script;

/// `flags` line + prelude + `lua/<file>`, as one string at compile time.
macro_rules! script {
    ($flags:literal, $file:literal) => {
        Script::new(concat!(
            $flags,
            "\n",
            include_str!("lua/lib/prelude.lua"),
            include_str!(concat!("lua/", $file))
        ))
    };
}

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
    pub record_retry: Script,
    pub record_stop: Script,
    pub heartbeat: Script,
    pub expired_workers: Script,
    pub release: Script,
    pub park: Script,
    pub unpark: Script,
    pub bury_parked: Script,
    pub expire_parked: Script,
    pub record_review: Script,
    pub record_approve: Script,
    pub record_reject: Script,
}

pub(crate) static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    push: script!("#!lua", "push.lua"),
    fetch: script!("#!lua", "fetch.lua"),
    ack: script!("#!lua flags=allow-oom", "ack.lua"),
    retry: script!("#!lua", "retry.lua"),
    defer: script!("#!lua", "defer.lua"),
    dead: script!("#!lua", "dead.lua"),
    recover: script!("#!lua", "recover.lua"),
    handback: script!("#!lua", "handback.lua"),
    promote: script!("#!lua", "promote.lua"),
    replay: script!("#!lua", "replay.lua"),
    purge: script!("#!lua flags=allow-oom", "purge.lua"),
    expire_dead: script!("#!lua flags=allow-oom", "expire_dead.lua"),
    record_start: script!("#!lua", "record_start.lua"),
    record_finish: script!("#!lua", "record_finish.lua"),
    record_requeue: script!("#!lua", "record_requeue.lua"),
    record_dead: script!("#!lua", "record_dead.lua"),
    record_retry: script!("#!lua", "record_retry.lua"),
    record_stop: script!("#!lua", "record_stop.lua"),
    heartbeat: script!("#!lua", "heartbeat.lua"),
    expired_workers: script!("#!lua flags=no-writes", "expired_workers.lua"),
    release: script!("#!lua", "release.lua"),
    park: script!("#!lua", "park.lua"),
    unpark: script!("#!lua", "unpark.lua"),
    bury_parked: script!("#!lua", "bury_parked.lua"),
    expire_parked: script!("#!lua flags=allow-oom", "expire_parked.lua"),
    record_review: script!("#!lua", "record_review.lua"),
    record_approve: script!("#!lua", "record_approve.lua"),
    record_reject: script!("#!lua", "record_reject.lua"),
});
