//! The console's pages: server-rendered HTML (maud escapes every value), readable
//! without JavaScript. A page of a run still going refreshes itself (a meta refresh).

use super::runner::Live;
use crate::status::{ItemRecord, RunRecord};
use crate::tasks::{Fields, Invalid, Kind, Task};
use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, PreEscaped, html};

const STYLE: &str = "
body{font-family:system-ui,sans-serif;margin:0;color:#222}
header{background:#232f3e;color:#fff;padding:.6em 1.2em;display:flex;gap:1.5em;align-items:center}
header a{color:#fff;text-decoration:none;font-weight:600}
main{padding:1em 1.5em}
table{border-collapse:collapse;width:100%;font-size:.92em}
th,td{border-bottom:1px solid #ddd;padding:.35em .5em;text-align:left;vertical-align:top}
th{background:#f3f3f3}
.err{color:#b00020;font-size:.9em;white-space:pre-wrap}
.field{margin:.6em 0}
.field label{display:block;font-weight:600}
.field .help{color:#666;font-size:.85em}
input[type=text],textarea,select{width:36em;max-width:100%;font-family:monospace}
textarea{height:8em}
.bad input,.bad textarea,.bad select{border:2px solid #b00020}
form.inline{display:inline}
button{margin:0 .15em}
.failed{color:#b00020}.copied{color:#0a7d32}.skipped{color:#555}.conflict{color:#b35900}.planned{color:#8a6d00}
.banner{background:#fff6d5;border:1px solid #e0c35a;padding:.5em;margin:.5em 0}
code,.mono{font-family:monospace;font-size:.9em;word-break:break-all}
";

fn page(title: &str, refresh: bool, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                @if refresh { meta http-equiv="refresh" content="2"; }
                title { (title) " · transfer-hub" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                header {
                    a href="/tasks" { "transfer-hub" }
                    a href="/tasks" { "Tasks" }
                    a href="/tasks/new?kind=images" { "New images task" }
                    a href="/tasks/new?kind=objects" { "New objects task" }
                }
                main { (body) }
            }
        }
    }
}

fn when(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| "—".into())
}

fn csrf_input(csrf: &str) -> Markup {
    html! { input type="hidden" name="csrf" value=(csrf); }
}

/// The login page.
pub fn login(nonce: &str, password: bool, error: Option<&str>) -> Markup {
    page(
        "Log in",
        false,
        html! {
            h1 { "Log in" }
            @if let Some(e) = error { p.err { (e) } }
            p { "Open the link " code { "transfer-hub serve" } " printed at start (" code { "/?token=…" } ")"
                @if password { ", or give the console password" } "." }
            @if password {
                form method="post" action="/login" {
                    input type="hidden" name="csrf" value=(nonce);
                    div.field { label for="password" { "Password" } input #password type="password" name="password"; }
                    button type="submit" { "Log in" }
                }
            }
        },
    )
}

/// A row of the tasks table.
pub struct TaskRow {
    pub task: Task,
    pub last: Option<RunRecord>,
    pub next: Option<DateTime<Utc>>,
    pub running: Option<String>,
}

/// The tasks table.
pub fn tasks(
    rows: &[TaskRow],
    next_page: Option<&str>,
    csrf: &str,
    notice: Option<&str>,
) -> Markup {
    page(
        "Tasks",
        rows.iter().any(|r| r.running.is_some()),
        html! {
            h1 { "Tasks" }
            form.inline #logout method="post" action="/logout" { (csrf_input(csrf)) button type="submit" { "Log out" } }
            @if let Some(n) = notice { p.banner { (n) } }
            @if rows.is_empty() {
                p { "No tasks yet: " a href="/tasks/new?kind=images" { "new images task" } " or " a href="/tasks/new?kind=objects" { "new objects task" } "." }
            } @else {
                table #tasks {
                    tr { th { "Name" } th { "Kind" } th { "Source → destination" } th { "Schedule" } th { "Last run" } th { "Next run" } th { "" } }
                    @for r in rows {
                        @let t = &r.task;
                        tr data-task=(t.name) {
                            td { a href={ "/tasks/" (t.name) } { (t.name) } }
                            td { (t.kind().as_str()) }
                            td.mono { (t.source()) " → " (t.dest()) }
                            td { (t.schedule.as_deref().unwrap_or("by hand")) @if !t.enabled { " (disabled)" } }
                            td {
                                @if let Some(id) = &r.running { a href={ "/runs/" (id) } { "running…" } }
                                @else if let Some(l) = &r.last {
                                    a href={ "/runs/" (l.run_id) } { (result(l)) }
                                    br; (when(Some(l.started_at)))
                                    br; (l.copied) " copied, " (l.skipped) " skipped, " (l.failed) " failed"
                                } @else { "never" }
                            }
                            td { (r.next.map(|n| when(Some(n))).unwrap_or_else(|| "—".into())) }
                            td {
                                form.inline method="post" action={ "/tasks/" (t.name) "/run" } { (csrf_input(csrf)) button type="submit" { "Run now" } }
                                form.inline method="post" action={ "/tasks/" (t.name) "/enabled" } {
                                    (csrf_input(csrf))
                                    input type="hidden" name="enabled" value=(if t.enabled { "false" } else { "true" });
                                    button type="submit" { @if t.enabled { "Disable" } @else { "Enable" } }
                                }
                                a href={ "/tasks/" (t.name) "/edit" } { "Edit" } " "
                                a href={ "/tasks/" (t.name) "/delete" } { "Delete" }
                            }
                        }
                    }
                }
                @if let Some(after) = next_page { p { a href={ "/tasks?after=" (after) } { "Next page →" } } }
            }
        },
    )
}

fn result(r: &RunRecord) -> &'static str {
    if r.ended_at.is_none() {
        "running"
    } else if r.failed > 0 {
        "failed"
    } else {
        "in sync"
    }
}

/// How a form field is shown.
enum Input {
    Text,
    Area,
    Check,
    Choice(&'static [&'static str]),
}

struct FieldSpec {
    key: &'static str,
    label: &'static str,
    input: Input,
    help: &'static str,
}

const fn f(key: &'static str, label: &'static str, input: Input, help: &'static str) -> FieldSpec {
    FieldSpec {
        key,
        label,
        input,
        help,
    }
}

const IMAGE_FIELDS: &[FieldSpec] = &[
    f(
        "source",
        "Source registry",
        Input::Text,
        "REGISTRY[/PREFIX], e.g. docker.io or quay.io/org",
    ),
    f(
        "dest",
        "Destination registry",
        Input::Text,
        "REGISTRY[/PREFIX]; an ECR registry gets its repositories created",
    ),
    f(
        "list",
        "Selection list",
        Input::Area,
        "name, name:tag, name:ALL_TAGS, name@sha256:…, host/name:tag; commas or new lines; # comments",
    ),
    f(
        "all_repos",
        "All repositories (instead of a list)",
        Input::Check,
        "every repository under the source prefix, every tag",
    ),
    f(
        "include_untagged",
        "Include untagged (ECR source, all repositories)",
        Input::Check,
        "",
    ),
    f(
        "include_tags",
        "Only listed tags matching",
        Input::Text,
        "regular expressions separated by spaces, anchored (v1\\..* latest); for ALL_TAGS lines and all repositories",
    ),
    f(
        "exclude_tags",
        "Leave out listed tags matching",
        Input::Text,
        "regular expressions separated by spaces, anchored (.*-rc.*)",
    ),
    f(
        "semver",
        "Only listed tags in the semver range",
        Input::Text,
        ">=1.20, <2 (MAJOR.MINOR.PATCH, optional leading v; other tags never match)",
    ),
    f(
        "newest",
        "Only the newest N versions per repository",
        Input::Text,
        "after the other rules; tags that are not semantic versions are left out",
    ),
    f("concurrency", "Copies at once", Input::Text, ""),
    f("resolve_concurrency", "Lookups at once", Input::Text, ""),
    f(
        "max_requests_per_second",
        "Max requests a second, per registry",
        Input::Text,
        "for registries that throttle without saying so; empty: no pacing",
    ),
    f(
        "image_min_age",
        "Min age of a source digest",
        Input::Text,
        "a cooldown, e.g. 7d: newer digests wait (counted from the first run that saw them)",
    ),
    f(
        "retries",
        "Retries",
        Input::Text,
        "after a failed attempt (network, 5xx, 429, timeout)",
    ),
    f("retry_base_ms", "Retry backoff base (ms)", Input::Text, ""),
    f(
        "retry_max_secs",
        "Longest wait between retries (s)",
        Input::Text,
        "",
    ),
    f(
        "attempt_timeout_secs",
        "Attempt timeout (s)",
        Input::Text,
        "",
    ),
    f(
        "authfile",
        "Auth file (path)",
        Input::Text,
        "a containers/docker auth file with the logins: its path, never its contents",
    ),
    f(
        "insecure_registries",
        "Plain-HTTP registries",
        Input::Text,
        "HOST:PORT, comma-separated (loopback ones always are)",
    ),
    f(
        "registry_certs",
        "Registry CAs (directory)",
        Input::Text,
        "registries' own CAs as DIR/HOST:PORT/ca.crt (like /etc/containers/certs.d)",
    ),
    f(
        "no_scan_on_push",
        "New ECR repositories: no scan on push",
        Input::Check,
        "",
    ),
    f(
        "ecr_kms_key",
        "New ECR repositories: KMS key",
        Input::Text,
        "",
    ),
    f(
        "ecr_tag_mutability",
        "New ECR repositories: tags",
        Input::Choice(&["MUTABLE", "IMMUTABLE"]),
        "IMMUTABLE: ECR refuses a push that would move a tag (a conflict, never retried)",
    ),
    f(
        "no_overwrite",
        "Never replace a destination tag that holds another image (report a conflict)",
        Input::Check,
        "",
    ),
];

const OBJECT_FIELDS: &[FieldSpec] = &[
    f(
        "source",
        "Source",
        Input::Text,
        "s3://BUCKET[/PREFIX] (a prefix is a folder)",
    ),
    f("dest", "Destination", Input::Text, "s3://BUCKET[/PREFIX]"),
    f(
        "source_endpoint",
        "Source endpoint",
        Input::Text,
        "S3-compatible store URL (path-style); empty for AWS",
    ),
    f("dest_endpoint", "Destination endpoint", Input::Text, ""),
    f("source_region", "Source region", Input::Text, ""),
    f("dest_region", "Destination region", Input::Text, ""),
    f(
        "source_profile",
        "Source profile",
        Input::Text,
        "a profile name from the shared config files (never keys)",
    ),
    f("dest_profile", "Destination profile", Input::Text, ""),
    f(
        "requester_pays",
        "Requester pays (source)",
        Input::Check,
        "",
    ),
    f(
        "compare",
        "Compare",
        Input::Choice(&["size", "etag", "checksum"]),
        "",
    ),
    f(
        "copy_mode",
        "Copy mode",
        Input::Choice(&["auto", "server", "stream"]),
        "",
    ),
    f("concurrency", "Requests at once", Input::Text, ""),
    f(
        "part_size",
        "Part size (bytes)",
        Input::Text,
        "5 MiB to 5 GiB",
    ),
    f(
        "multipart_threshold",
        "Multipart threshold (bytes)",
        Input::Text,
        "",
    ),
    f("stream_buffer", "Stream buffer (bytes)", Input::Text, ""),
    f(
        "storage_class",
        "Storage class",
        Input::Text,
        "e.g. STANDARD_IA; empty for the bucket's default",
    ),
    f("sse_kms_key", "SSE-KMS key", Input::Text, ""),
    f("tags", "Copy tags", Input::Check, ""),
    f(
        "filters",
        "Filters",
        Input::Area,
        "one rule a line, first match decides: + GLOB (include) or - GLOB (exclude), e.g. - /tmp/** then + *.jpg",
    ),
    f(
        "min_size",
        "Min size",
        Input::Text,
        "e.g. 10M; empty for none",
    ),
    f(
        "max_size",
        "Max size",
        Input::Text,
        "e.g. 1.5G; empty for none",
    ),
    f(
        "max_age",
        "Max age",
        Input::Text,
        "e.g. 7d (by LastModified)",
    ),
    f("min_age", "Min age", Input::Text, "e.g. 12h"),
    f(
        "prefix_list",
        "Prefix list",
        Input::Text,
        "a file or s3://BUCKET/KEY, one prefix a line",
    ),
    f(
        "list_concurrency",
        "Listings at once",
        Input::Text,
        "prefixes of the prefix list, or folders found by delimiter listings; 1: one listing a side",
    ),
    f(
        "delete",
        "Delete destination objects missing at the source",
        Input::Check,
        "only after every copy of the run succeeded; filtered objects are kept",
    ),
    f(
        "max_delete",
        "Max deletes",
        Input::Text,
        "N or P% of the destination's objects in scope; more refuses the whole delete step",
    ),
    f(
        "restore_days",
        "Restore archived sources for (days)",
        Input::Text,
        "GLACIER and DEEP_ARCHIVE sources not restored get a restore; empty: they are reported archived and left",
    ),
    f(
        "restore_tier",
        "Restore tier",
        Input::Choice(&["Standard", "Bulk"]),
        "",
    ),
    f(
        "bwlimit",
        "Bandwidth limit",
        Input::Text,
        "bytes a second streamed through this machine, e.g. 50M (MiB/s); server-side copies are not limited",
    ),
    f(
        "backup_prefix",
        "Backup prefix",
        Input::Text,
        "a key prefix in the destination bucket, e.g. .trash/: deleted and overwritten objects move there",
    ),
    f("retries", "Retries", Input::Text, ""),
    f("retry_base_ms", "Retry backoff base (ms)", Input::Text, ""),
    f(
        "attempt_timeout_secs",
        "Attempt timeout (s)",
        Input::Text,
        "",
    ),
];

fn field(spec: &FieldSpec, fields: &Fields, invalid: Option<&Invalid>) -> Markup {
    let value = fields.get(spec.key).map(String::as_str).unwrap_or("");
    let err = invalid.and_then(|i| i.of(spec.key));
    let id = format!("f-{}", spec.key);
    html! {
        div.field.bad[err.is_some()] data-field=(spec.key) {
            label for=(id) { (spec.label) }
            @match spec.input {
                Input::Text => input #(id) type="text" name=(spec.key) value=(value);,
                Input::Area => textarea #(id) name=(spec.key) { (value) },
                Input::Check => {
                    input type="hidden" name=(spec.key) value="false";
                    input #(id) type="checkbox" name=(spec.key) value="true" checked[value == "true"];
                },
                Input::Choice(options) => select #(id) name=(spec.key) {
                    @for o in options { option value=(o) selected[*o == value] { (o) } }
                },
            }
            @if !spec.help.is_empty() { div.help { (spec.help) } }
            @if let Some(e) = err {
                div.err id={ "err-" (spec.key) } {
                    (e.message)
                    @if !e.lines.is_empty() {
                        ul { @for l in &e.lines { li { "line " (l.line) ": " code { (l.text) } " — " (l.reason) } } }
                    }
                }
            }
        }
    }
}

/// The new-task or edit-task form; `name` is `None` for a new task.
pub fn task_form(
    kind: Kind,
    name: Option<&str>,
    typed_name: &str,
    fields: &Fields,
    invalid: Option<&Invalid>,
    csrf: &str,
) -> Markup {
    let specs = match kind {
        Kind::Images => IMAGE_FIELDS,
        Kind::Objects => OBJECT_FIELDS,
    };
    let (title, action) = match name {
        Some(n) => (format!("Edit task {n}"), format!("/tasks/{n}/edit")),
        None => (format!("New {kind} task"), "/tasks/new".to_string()),
    };
    let name_err = invalid.and_then(|i| i.of("name"));
    page(
        &title,
        false,
        html! {
            h1 { (title) }
            @if let Some(i) = invalid { p.err #form-errors { (i.errors.len()) " field(s) to fix; nothing was saved." } }
            form method="post" action=(action) {
                (csrf_input(csrf))
                input type="hidden" name="kind" value=(kind.as_str());
                div.field.bad[name_err.is_some()] data-field="name" {
                    label for="f-name" { "Name" }
                    @if name.is_some() { input #f-name type="text" name="name" value=(typed_name) readonly; }
                    @else { input #f-name type="text" name="name" value=(typed_name); }
                    div.help { "lowercase letters, digits and '-', starting with a letter" }
                    @if let Some(e) = name_err { div.err id="err-name" { (e.message) } }
                }
                @for s in specs { (field(s, fields, invalid)) }
                (field(&f("schedule", "Schedule", Input::Text, "rate(1 day), rate(30 minutes) or cron(0 3 * * ? *) as EventBridge writes them (UTC); empty: by hand only"), fields, invalid))
                (field(&f("enabled", "Enabled (runs on its schedule)", Input::Check, ""), fields, invalid))
                button #save type="submit" { "Save" }
            }
        },
    )
}

/// What a task's page shows.
pub struct TaskView<'a> {
    pub task: &'a Task,
    pub runs: &'a [RunRecord],
    /// Not the newest page (so it links back to it).
    pub deep: bool,
    /// The last run shown, when older runs follow.
    pub older: Option<&'a str>,
    pub running: Option<&'a str>,
    pub next: Option<DateTime<Utc>>,
    pub notice: Option<&'a str>,
}

/// A task's page: its settings and its runs.
pub fn task(v: &TaskView<'_>, csrf: &str) -> Markup {
    let TaskView {
        task: t,
        runs,
        deep,
        older,
        running,
        next,
        notice,
    } = *v;
    page(
        &t.name,
        running.is_some(),
        html! {
            h1 { "Task " (t.name) }
            @if let Some(n) = notice { p.banner { (n) } }
            p {
                form.inline method="post" action={ "/tasks/" (t.name) "/run" } { (csrf_input(csrf)) button #run-now type="submit" { "Run now" } }
                a href={ "/tasks/" (t.name) "/edit" } { "Edit" } " · "
                a href={ "/tasks/" (t.name) "/delete" } { "Delete" }
            }
            @if let Some(id) = running { p.banner { "Running now: " a href={ "/runs/" (id) } { (id) } } }
            table #settings {
                tr { th { "kind" } td { (t.kind().as_str()) } }
                @for (k, v) in t.fields() {
                    @if !v.is_empty() { tr { th { (k) } td.mono { @for (i, line) in v.lines().enumerate() { @if i > 0 { br; } (line) } } } }
                }
                tr { th { "next run" } td { (next.map(|n| when(Some(n))).unwrap_or_else(|| "—".into())) } }
            }
            h2 { "Runs" }
            @if runs.is_empty() { p { "No runs yet." } } @else {
                table #runs {
                    tr { th { "Run" } th { "Result" } th { "Started" } th { "Ended" } th { "Copied" } th { "Skipped" } th { "Failed" } th { "Bytes" } }
                    @for r in runs {
                        tr {
                            td { a href={ "/runs/" (r.run_id) } { (r.run_id) } }
                            td { (result(r)) }
                            td { (when(Some(r.started_at))) } td { (when(r.ended_at)) }
                            td { (r.copied) } td { (r.skipped) } td { (r.failed) } td { (r.bytes) }
                        }
                    }
                }
                p {
                    @if deep { a href={ "/tasks/" (t.name) } { "← Newest" } " " }
                    @if let Some(last) = older { a href={ "/tasks/" (t.name) "?before=" (enc(last)) } { "Older →" } }
                }
            }
        },
    )
}

/// What the run page shows.
pub struct RunView<'a> {
    pub run_id: &'a str,
    pub task: Option<&'a str>,
    pub run: Option<&'a RunRecord>,
    pub live: Option<&'a Live>,
    pub items: &'a [ItemRecord],
    pub failed_only: bool,
    /// Not the first page (so it links back to it).
    pub deep: bool,
    /// The last item shown (source, destination), when more follow.
    pub next: Option<(&'a str, &'a str)>,
    pub can_retry: bool,
}

/// A run's page: counts, times, every item (a page at a time), live while it goes.
pub fn run(v: &RunView<'_>, csrf: &str) -> Markup {
    let going = v.live.is_some() || v.run.is_some_and(|r| r.ended_at.is_none());
    page(
        &format!("Run {}", v.run_id),
        going,
        html! {
            h1 { "Run " (v.run_id) }
            @if let Some(t) = v.task { p { "Task " a href={ "/tasks/" (t) } { (t) } } }
            @if let Some(l) = v.live {
                p.banner #live {
                    @if l.waiting { "Waiting for a free slot…" }
                    @else if let Some((to_copy, total)) = l.planned { "Running: " (l.done) " of " (total) " done (" (to_copy) " to copy, " (l.failed) " failed so far)" }
                    @else { "Running: reading the source and destination…" }
                    " This page refreshes itself."
                }
            }
            @if let Some(r) = v.run {
                table #counts {
                    tr { th { "Result" } td #result { (if v.live.is_some() { "running" } else { result(r) }) } }
                    tr { th { "Source → destination" } td.mono { (r.source) " → " (r.dest) } }
                    tr { th { "Copied" } td #copied { (r.copied) } }
                    tr { th { "Skipped" } td #skipped { (r.skipped) } }
                    tr { th { "Failed" } td #failed { (r.failed) } }
                    @if r.conflicts > 0 {
                        tr { th { "Conflicts" } td #conflicts { (r.conflicts) " (destination tags holding another image, left alone)" } }
                    }
                    @if r.archived > 0 {
                        tr { th { "Archived" } td #archived { (r.archived) " (GLACIER or DEEP_ARCHIVE sources not restored: left for now; a restore-days setting asks for restores)" } }
                    }
                    @if r.restoring > 0 {
                        tr { th { "Restoring" } td #restoring { (r.restoring) " (archived sources being restored: a later run copies them)" } }
                    }
                    @if r.waiting > 0 {
                        tr { th { "Waiting" } td #waiting { (r.waiting) " (source digests newer than the task's min age: a later run copies them)" } }
                    }
                    @if r.deferred > 0 {
                        tr { th { "Deferred" } td #deferred { (r.deferred) " (left for the next run: the source registry's pull quota would have run out)" } }
                    }
                    @if r.deleted > 0 {
                        tr { th { "Deleted" } td #deleted { (r.deleted) " (destination objects missing at the source, removed or moved to the backup prefix)" } }
                    }
                    @if r.filtered > 0 {
                        tr { th { "Filtered" } td #filtered { (r.filtered) " (left out by the filters)" } }
                    }
                    tr { th { "Bytes" } td { (r.bytes) } }
                    tr { th { "Started" } td { (when(Some(r.started_at))) } }
                    tr { th { "Ended" } td { (when(r.ended_at)) } }
                    tr { th { "Duration" } td { (r.ended_at.map(|e| format!("{:.1} s", (e - r.started_at).num_milliseconds() as f64 / 1000.0)).unwrap_or_else(|| "—".into())) } }
                }
                @if v.can_retry && r.failed > 0 && !going {
                    form method="post" action={ "/runs/" (v.run_id) "/retry" } { (csrf_input(csrf)) button #retry-failed type="submit" { "Retry failed" } }
                }
            } @else if v.live.is_none() { p { "No such run." } }
            h2 { "Items" }
            p {
                // The counts come from the run record: counting a big run's items would read them all.
                @let all = v.run.map(|r| format!(" ({})", r.copied + r.skipped + r.failed + r.conflicts + r.deleted + r.archived + r.restoring + r.waiting + r.deferred)).unwrap_or_default();
                @let failed = v.run.map(|r| format!(" ({})", r.failed)).unwrap_or_default();
                @if v.failed_only { a href={ "/runs/" (v.run_id) } { "All items" (all) } " · " b { "Failed only" (failed) } }
                @else { b { "All items" (all) } " · " a #failed-filter href={ "/runs/" (v.run_id) "?failed=1" } { "Failed only" (failed) } }
            }
            table #items {
                tr { th { "Source" } th { "Destination" } th { "Status" } th { "Digest / ETag" } th { "Attempts" } th { "Error" } }
                @for i in v.items {
                    tr {
                        td.mono { (i.source) } td.mono { (i.dest) }
                        td class=(i.status.as_str()) { (i.status.as_str()) }
                        td.mono { (i.dest_digest.as_deref().or(i.source_digest.as_deref()).unwrap_or("")) }
                        td { (i.attempts) }
                        td {
                            @if let Some(e) = &i.error { b { (e.class.as_str()) } ": " span.err { (e.message) } }
                            @if let Some(t) = i.waiting_until { "copied by a run from " (when(Some(t))) }
                        }
                    }
                }
            }
            p {
                @let q = if v.failed_only { "failed=1&" } else { "" };
                @if v.deep { a href={ "/runs/" (v.run_id) "?" (q) } { "← First page" } " " }
                @if let Some((s, d)) = v.next { a #next-page href={ "/runs/" (v.run_id) "?" (q) "after=" (enc(s)) "&after_dest=" (enc(d)) } { "Next →" } }
            }
        },
    )
}

/// A value for a link's query string (maud escapes the HTML on top).
fn enc(v: &str) -> String {
    serde_urlencoded::to_string([("", v)])
        .map(|s| s[1..].to_string())
        .unwrap_or_default()
}

/// Asks before deleting.
pub fn confirm_delete(name: &str, csrf: &str) -> Markup {
    page(
        "Delete task",
        false,
        html! {
            h1 { "Delete task " (name) "?" }
            p { "The task goes; its past runs stay in the state file." }
            form method="post" action={ "/tasks/" (name) "/delete" } {
                (csrf_input(csrf))
                button #confirm-delete type="submit" { "Delete " (name) }
                " " a href={ "/tasks/" (name) } { "Cancel" }
            }
        },
    )
}

/// An error page.
pub fn error(title: &str, message: &str) -> Markup {
    page(
        title,
        false,
        html! { h1 { (title) } p.err #error { (message) } p { a href="/tasks" { "Tasks" } } },
    )
}
