//! The Lua scripts: one file per atomic state transition, loaded once per Redis and
//! called by SHA (redis-rs sends EVALSHA and loads the script on NOSCRIPT, e.g. after a
//! Redis restart).

use std::sync::LazyLock;

use redis::Script;

pub(crate) struct Scripts {
    pub push: Script,
    pub fetch: Script,
    pub ack: Script,
    pub retry: Script,
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
}

pub(crate) static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    push: Script::new(include_str!("lua/push.lua")),
    fetch: Script::new(include_str!("lua/fetch.lua")),
    ack: Script::new(include_str!("lua/ack.lua")),
    retry: Script::new(include_str!("lua/retry.lua")),
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
});
