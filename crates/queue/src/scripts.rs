//! The Lua scripts: one file per atomic state transition, loaded once per Redis and
//! called by SHA (redis-rs sends EVALSHA and loads the script on NOSCRIPT, e.g. after a
//! Redis restart).
//!
//! Each script is assembled once, when first used: its flags line, the shared helpers of
//! `lua/lib/prelude.lua` (Redis's time, the attempt prefix, chunked pushes) that it uses,
//! then its file (both read at build time). Only the helpers a script uses: Redis
//! defines every helper of a script on each call, which cost about 1 µs per call with all
//! of them (a quarter of a small script's time).
//!
//! Every script starts with a `#!lua` line (Redis 7.0 script flags). Without it Redis checks
//! `maxmemory` command by command, so a script refused half-way would keep its deletes and
//! lose its writes: an entry taken off a list and never put anywhere. With it, a writing
//! script is refused as a whole while Redis is out of memory, and the worker retries it.
//! `allow-oom` marks the scripts that only free memory (ack, purge, expire), so they still
//! run then; `no-writes` marks the read-only ones.

use std::sync::LazyLock;

use redis::Script;

/// `flags` line + the prelude's helpers it uses + `lua/<file>`.
macro_rules! script {
    ($flags:literal, $file:literal) => {
        Script::new(&assemble($flags, include_str!(concat!("lua/", $file))))
    };
}

const PRELUDE: &str = include_str!("lua/lib/prelude.lua");

/// The script's text: `flags`, then the prelude's helpers that `body` uses (directly or
/// through another helper), in the prelude's order, then `body`. The prelude is a list of
/// blocks separated by blank lines, each defining one name (`local function NAME` or
/// `local NAME =`) after its comment.
fn assemble(flags: &str, body: &str) -> String {
    let blocks: Vec<(&str, Option<&str>)> = PRELUDE
        .split("\n\n")
        .map(|block| (block, defined_name(block)))
        .collect();
    let mut used = vec![false; blocks.len()];
    let mut text_in_use = body.to_owned();
    loop {
        let mut grew = false;
        for (i, (block, name)) in blocks.iter().enumerate() {
            if used[i] {
                continue;
            }
            if let Some(name) = name
                && mentions(&text_in_use, name)
            {
                used[i] = true;
                text_in_use.push('\n');
                text_in_use.push_str(block);
                grew = true;
            }
        }
        if !grew {
            break;
        }
    }
    let mut script = format!("{flags}\n");
    for (i, (block, _)) in blocks.iter().enumerate() {
        if used[i] {
            script.push_str(block.trim_end_matches('\n'));
            script.push_str("\n\n");
        }
    }
    script.push_str(body);
    script
}

/// The name a prelude block defines.
fn defined_name(block: &str) -> Option<&str> {
    block.lines().find_map(|line| {
        let rest = line
            .strip_prefix("local function ")
            .or_else(|| line.strip_prefix("local "))?;
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        (end > 0).then(|| &rest[..end])
    })
}

/// Whether `text` uses `name` as a whole word (not inside a longer identifier).
fn mentions(text: &str, name: &str) -> bool {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    text.match_indices(name).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + name.len()..].chars().next();
        !before.is_some_and(is_ident) && !after.is_some_and(is_ident)
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_prelude_block_defines_one_name() {
        for block in PRELUDE.split("\n\n") {
            if block.lines().any(|l| l.starts_with("local")) {
                assert!(
                    defined_name(block).is_some(),
                    "block defines nothing: {block}"
                );
            }
        }
    }

    #[test]
    fn a_script_gets_the_helpers_it_uses_and_theirs_only() {
        let text = assemble("#!lua", "push_to_lanes('LPUSH', lanes_at(1), ARGV)\n");
        for helper in [
            "push_to_lanes",
            "lanes_at",
            "lane_of",
            "push_all",
            "wake",
            "LANES",
        ] {
            assert!(
                text.contains(&format!("local function {helper}("))
                    || text.contains(&format!("local {helper} =")),
                "{helper} missing from:\n{text}"
            );
        }
        for unused in ["now_ms", "with_attempt", "attempt_of", "is_terminal"] {
            assert!(
                !text.contains(&format!("local function {unused}(")),
                "{unused} included"
            );
        }
        assert!(text.starts_with("#!lua\n"));
    }

    #[test]
    fn a_name_inside_a_longer_identifier_is_not_a_use() {
        assert!(!mentions("local wake_up = 1", "wake"));
        assert!(mentions("wake(lanes, 1)", "wake"));
        assert!(!mentions("my_now_ms()", "now_ms"));
    }
}
