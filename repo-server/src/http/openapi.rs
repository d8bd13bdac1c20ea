//! The OpenAPI 3.1 document served at `/v1/openapi.json`, generated rather than written: the
//! component schemas come from the `schema` crate's types (utoipa's `ToSchema`, so a field added
//! to a type is in the document), the operations from [`OPERATIONS`], one per entry of
//! [`super::ROUTES`], with their error responses grouped by the status of each
//! [`ErrorCode`]. The integration suite checks that the operations are the routes and validates
//! real answers of every route against the schemas.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use schema::api::*;
use schema::files::FileKind;
use schema::retention::Policy;
use schema::{ErrorBody, ErrorCode};
use serde_json::{json, Map, Value};
use utoipa::OpenApi;

/// The schemas of the document (each pulls in the types it refers to).
#[derive(OpenApi)]
#[openapi(components(schemas(
    ErrorBody,
    ErrorCode,
    Capabilities,
    Identity,
    CreateSession,
    SessionStatus,
    Digests,
    CommitRequest,
    CommitResponse,
    Manifest,
    BackupList,
    SourceSummary,
    RepoStats,
    VerifyRequest,
    JobStarted,
    JobStatus,
    PruneRequest,
    PruneReport,
    CreateExport,
    ExportInfo,
    RetentionView,
    PolicySet,
    Policy,
    FileListing,
    FileKind,
    SearchResults,
)))]
struct Schemas;

/// What a request or an answer carries.
#[derive(Debug, Clone, Copy)]
pub enum Body {
    /// JSON of the named component schema.
    Json(&'static str),
    /// A JSON array of the named component schema.
    JsonArray(&'static str),
    /// Any JSON (this document).
    AnyJson,
    /// Bytes of a media type, with what they are.
    Bytes(&'static str, &'static str),
    /// Plain text.
    Text,
}

/// One parameter.
#[derive(Debug, Clone, Copy)]
pub struct Param {
    /// Name.
    pub name: &'static str,
    /// `path`, `query` or `header`.
    pub at: &'static str,
    /// Whether it must be given.
    pub required: bool,
    /// JSON schema of the value.
    pub schema: fn() -> Value,
    /// What it means.
    pub description: &'static str,
}

/// One operation: a route, what it takes and what it answers.
#[derive(Debug, Clone, Copy)]
pub struct Operation {
    /// Method, lowercase.
    pub method: &'static str,
    /// Path in OpenAPI syntax.
    pub path: &'static str,
    /// One line.
    pub summary: &'static str,
    /// No token needed.
    pub public: bool,
    /// Parameters.
    pub params: &'static [Param],
    /// Request bodies by media type (empty: none).
    pub request: &'static [Body],
    /// Success answers: status, description, bodies (empty: no content).
    pub ok: &'static [(u16, &'static str, &'static [Body])],
    /// Error codes it may answer besides `UNAUTHORIZED` (added for every non-public route).
    pub errors: &'static [ErrorCode],
}

fn string() -> Value {
    json!({ "type": "string" })
}
fn integer() -> Value {
    json!({ "type": "integer", "minimum": 0 })
}
fn uuid() -> Value {
    json!({ "type": "string", "format": "uuid" })
}
fn digest() -> Value {
    json!({ "type": "string", "pattern": "^blake3:[0-9a-f]{64}$" })
}
fn name() -> Value {
    json!({ "type": "string", "pattern": "^[A-Za-z0-9._-]{1,128}$" })
}
fn time() -> Value {
    json!({ "type": "string", "format": "date-time" })
}
fn limit() -> Value {
    json!({ "type": "integer", "minimum": 1, "maximum": 1000, "default": 100 })
}

const fn path(name: &'static str, schema: fn() -> Value, description: &'static str) -> Param {
    Param {
        name,
        at: "path",
        required: true,
        schema,
        description,
    }
}
const fn query(name: &'static str, schema: fn() -> Value, description: &'static str) -> Param {
    Param {
        name,
        at: "query",
        required: false,
        schema,
        description,
    }
}

const SESSION: Param = path("id", uuid, "session id chosen by the client");
const BACKUP: Param = path("id", name, "backup id");
const DISK: Param = path("name", name, "disk name");
const EXPORT: Param = path("export", string, "export name (from the export's creation)");
const DIGEST: Param = path("digest", digest, "chunk id");
const SOURCE: Param = path("source", string, "source name");
const RANGE: Param = Param {
    name: "Range",
    at: "header",
    required: false,
    schema: string,
    description: "one range, e.g. bytes=0-1048575",
};
const FILE: [Param; 3] = [
    query(
        "path",
        string,
        "absolute path inside the file system (default /)",
    ),
    query(
        "disk",
        string,
        "disk name (default: the first with a file index)",
    ),
    query(
        "partition",
        integer,
        "partition number (0: file system on the whole disk; default: the disk's first)",
    ),
];

const BIN: Body = Body::Bytes("application/octet-stream", "bytes");

use ErrorCode as E;

/// Every operation of the API: one per entry of [`super::ROUTES`].
pub const OPERATIONS: &[Operation] = &[
    Operation {
        method: "get",
        path: "/healthz",
        summary: "Liveness",
        public: true,
        params: &[],
        request: &[],
        ok: &[(200, "ok", &[Body::Text])],
        errors: &[],
    },
    Operation {
        method: "get",
        path: "/metrics",
        summary: "Prometheus metrics (a token only when metrics_need_token is set)",
        public: true,
        params: &[],
        request: &[],
        ok: &[(200, "text exposition format", &[Body::Text])],
        errors: &[E::Unauthorized],
    },
    Operation {
        method: "get",
        path: "/v1/capabilities",
        summary: "What this repository supports",
        public: true,
        params: &[],
        request: &[],
        ok: &[(200, "ok", &[Body::Json("Capabilities")])],
        errors: &[],
    },
    Operation {
        method: "get",
        path: "/v1/openapi.json",
        summary: "This document",
        public: true,
        params: &[],
        request: &[],
        ok: &[(200, "OpenAPI 3.1 document", &[Body::AnyJson])],
        errors: &[],
    },
    Operation {
        method: "get",
        path: "/v1/whoami",
        summary: "The calling token's tenant and role",
        public: false,
        params: &[],
        request: &[],
        ok: &[(200, "ok", &[Body::Json("Identity")])],
        errors: &[],
    },
    Operation {
        method: "put",
        path: "/v1/sessions/{id}",
        summary: "Create a session (idempotent)",
        public: false,
        params: &[SESSION],
        request: &[Body::Json("CreateSession")],
        ok: &[
            (
                201,
                "created (Session-Expires header)",
                &[Body::Json("SessionStatus")],
            ),
            (
                200,
                "exists with identical parameters",
                &[Body::Json("SessionStatus")],
            ),
        ],
        errors: &[
            E::BadId,
            E::Forbidden,
            E::BaseNotFound,
            E::SessionConflict,
            E::TooLarge,
            E::UnsupportedType,
            E::InvalidBody,
        ],
    },
    Operation {
        method: "get",
        path: "/v1/sessions/{id}",
        summary: "Session state and progress",
        public: false,
        params: &[SESSION],
        request: &[],
        ok: &[(200, "ok", &[Body::Json("SessionStatus")])],
        errors: &[E::BadId, E::NotFound],
    },
    Operation {
        method: "delete",
        path: "/v1/sessions/{id}",
        summary: "Abort a session and release its pins (repeatable)",
        public: false,
        params: &[SESSION],
        request: &[],
        ok: &[(204, "aborted", &[])],
        errors: &[E::BadId, E::Forbidden, E::NotFound, E::SessionState],
    },
    Operation {
        method: "post",
        path: "/v1/sessions/{id}/find-missing",
        summary: "Which digests must be uploaded; pins the others",
        public: false,
        params: &[SESSION],
        request: &[
            Body::Bytes("application/octet-stream", "concatenated 32-byte digests"),
            Body::Json("Digests"),
        ],
        ok: &[(
            200,
            "missing digests, same encoding as the request",
            &[BIN, Body::Json("Digests")],
        )],
        errors: &[
            E::BadBody,
            E::BadDigest,
            E::BadId,
            E::NotFound,
            E::SessionState,
            E::TooLarge,
            E::UnsupportedType,
            E::InvalidBody,
        ],
    },
    Operation {
        method: "put",
        path: "/v1/sessions/{id}/chunks/{digest}",
        summary: "Upload one chunk",
        public: false,
        params: &[
            SESSION,
            DIGEST,
            Param {
                name: "Chunk-Length",
                at: "header",
                required: true,
                schema: integer,
                description: "uncompressed bytes",
            },
        ],
        request: &[
            Body::Bytes("application/zstd", "exactly one zstd frame"),
            Body::Bytes("application/octet-stream", "the raw block"),
        ],
        ok: &[
            (201, "stored", &[]),
            (200, "already present; body not needed", &[]),
        ],
        errors: &[
            E::BadDigest,
            E::MissingChunkLength,
            E::BadId,
            E::BadRequest,
            E::NotFound,
            E::BodyTimeout,
            E::SessionState,
            E::TooLarge,
            E::UnsupportedType,
            E::DigestMismatch,
            E::LengthMismatch,
            E::BadFrame,
            E::StorageFull,
        ],
    },
    Operation {
        method: "put",
        path: "/v1/sessions/{id}/disks/{name}/entries",
        summary: "Append index records at a position",
        public: false,
        params: &[
            SESSION,
            DISK,
            Param {
                name: "start",
                at: "query",
                required: true,
                schema: integer,
                description: "records the client believes the server holds",
            },
        ],
        request: &[Body::Bytes(
            "application/octet-stream",
            "40-byte records: u64 LE block number + 32-byte digest",
        )],
        ok: &[(204, "accepted; Index-Entries header holds the total", &[])],
        errors: &[
            E::BadBody,
            E::BadRequest,
            E::BadId,
            E::NotFound,
            E::PositionConflict,
            E::SessionState,
            E::TooLarge,
            E::UnsupportedType,
            E::UnknownChunk,
            E::BlockOutOfRange,
            E::LengthMismatch,
        ],
    },
    Operation {
        method: "post",
        path: "/v1/sessions/{id}/commit",
        summary: "Commit the session into a backup",
        public: false,
        params: &[SESSION],
        request: &[Body::Json("CommitRequest")],
        ok: &[
            (
                201,
                "committed (Location header)",
                &[Body::Json("CommitResponse")],
            ),
            (200, "already committed", &[Body::Json("CommitResponse")]),
        ],
        errors: &[
            E::BadId,
            E::NotFound,
            E::BaseNotFound,
            E::CountMismatch,
            E::ChecksumMismatch,
            E::SessionState,
            E::TooLarge,
            E::UnsupportedType,
            E::MissingChunks,
            E::InvalidBody,
        ],
    },
    Operation {
        method: "head",
        path: "/v1/chunks/{digest}",
        summary: "Chunk sizes: Content-Length is the stored size, Chunk-Length the raw size",
        public: false,
        params: &[DIGEST],
        request: &[],
        ok: &[(200, "present", &[])],
        errors: &[E::BadDigest, E::NotFound],
    },
    Operation {
        method: "get",
        path: "/v1/chunks/{digest}",
        summary: "The stored zstd frame, or the raw block with Accept: application/octet-stream",
        public: false,
        params: &[DIGEST],
        request: &[],
        ok: &[(
            200,
            "chunk",
            &[Body::Bytes("application/zstd", "one zstd frame"), BIN],
        )],
        errors: &[E::BadDigest, E::NotFound],
    },
    Operation {
        method: "get",
        path: "/v1/sources",
        summary: "Sources with backups (the token's tenant; every tenant's for admins)",
        public: false,
        params: &[],
        request: &[],
        ok: &[(200, "ok", &[Body::JsonArray("SourceSummary")])],
        errors: &[],
    },
    Operation {
        method: "get",
        path: "/v1/backups",
        summary: "Backups, newest first, paginated (Link header with rel=next when there is more)",
        public: false,
        params: &[
            query("source", string, "only this source"),
            query("since", time, "created at or after"),
            query("until", time, "created before"),
            query("limit", limit, "page size"),
            query("cursor", string, "the next cursor of the previous page"),
        ],
        request: &[],
        ok: &[(200, "ok", &[Body::Json("BackupList")])],
        errors: &[E::BadRequest],
    },
    Operation {
        method: "get",
        path: "/v1/backups/{id}",
        summary: "The manifest",
        public: false,
        params: &[BACKUP],
        request: &[],
        ok: &[(200, "ok", &[Body::Json("Manifest")])],
        errors: &[E::BadId, E::NotFound],
    },
    Operation {
        method: "delete",
        path: "/v1/backups/{id}",
        summary: "Delete a backup (admin)",
        public: false,
        params: &[BACKUP],
        request: &[],
        ok: &[(204, "deleted", &[])],
        errors: &[
            E::BadId,
            E::Forbidden,
            E::NotFound,
            E::BackupInUse,
            E::BackupImmutable,
            E::Unavailable,
        ],
    },
    Operation {
        method: "post",
        path: "/v1/backups/{id}/disks/{name}/exports",
        summary: "Serve a backup's disk read-only over NBD (instant recovery): a capability name that expires",
        public: false,
        params: &[BACKUP, DISK],
        request: &[Body::Json("CreateExport")],
        ok: &[(201, "the export", &[Body::Json("ExportInfo")])],
        errors: &[
            E::BadId,
            E::NotFound,
            E::TooLarge,
            E::UnsupportedType,
            E::InvalidBody,
            E::ExportsDisabled,
            E::Encrypted,
            E::Unavailable,
        ],
    },
    Operation {
        method: "delete",
        path: "/v1/backups/{id}/disks/{name}/exports/{export}",
        summary: "End an NBD export (open connections are answered ESHUTDOWN)",
        public: false,
        params: &[BACKUP, DISK, EXPORT],
        request: &[],
        ok: &[(204, "ended", &[])],
        errors: &[E::BadId, E::NotFound],
    },
    Operation {
        method: "get",
        path: "/v1/backups/{id}/disks/{name}/index",
        summary: "One 32-byte digest per block",
        public: false,
        params: &[BACKUP, DISK],
        request: &[],
        ok: &[(200, "index", &[BIN])],
        errors: &[E::BadId, E::NotFound],
    },
    Operation {
        method: "get",
        path: "/v1/backups/{id}/disks/{name}/image",
        summary: "The whole disk, Range supported (one range)",
        public: false,
        params: &[BACKUP, DISK, RANGE],
        request: &[],
        ok: &[(200, "image", &[BIN]), (206, "one range", &[BIN])],
        errors: &[E::BadId, E::NotFound, E::RangeNotSatisfiable],
    },
    Operation {
        method: "get",
        path: "/v1/backups/{id}/files",
        summary: "List a directory of a backup's guest file system",
        public: false,
        params: &[
            BACKUP,
            FILE[0],
            FILE[1],
            FILE[2],
            query(
                "depth",
                integer,
                "levels below path (default 1, at most 64; 0: the entry itself)",
            ),
            query(
                "limit",
                integer,
                "most entries (default and maximum 100000); truncated says when more exist",
            ),
        ],
        request: &[],
        ok: &[(200, "ok", &[Body::Json("FileListing")])],
        errors: &[E::BadRequest, E::BadId, E::NotFound],
    },
    Operation {
        method: "get",
        path: "/v1/backups/{id}/files/content",
        summary: "One guest file's bytes, streamed from the stored chunks (Range supported)",
        public: false,
        params: &[BACKUP, FILE[0], FILE[1], FILE[2], RANGE],
        request: &[],
        ok: &[(200, "the file", &[BIN]), (206, "one range", &[BIN])],
        errors: &[
            E::BadRequest,
            E::BadId,
            E::NotFound,
            E::FileExcluded,
            E::RangeNotSatisfiable,
        ],
    },
    Operation {
        method: "get",
        path: "/v1/search",
        summary: "Find guest files by name across the tenant's backups, newest backup first",
        public: false,
        params: &[
            query(
                "name",
                string,
                "glob on the file name (* and ?); every name when absent",
            ),
            query("path", string, "only under this directory"),
            query("source", string, "only this source"),
            query("since", time, "backups created at or after"),
            query("until", time, "backups created before"),
            query("limit", limit, "page size"),
            query("after", integer, "the next value of the previous page"),
            query("tenant", string, "admins: the tenant to search"),
        ],
        request: &[],
        ok: &[(200, "ok", &[Body::Json("SearchResults")])],
        errors: &[E::BadRequest, E::Forbidden],
    },
    Operation {
        method: "get",
        path: "/v1/stats",
        summary: "Repository totals (admin)",
        public: false,
        params: &[],
        request: &[],
        ok: &[(200, "ok", &[Body::Json("RepoStats")])],
        errors: &[E::Forbidden],
    },
    Operation {
        method: "post",
        path: "/v1/admin/gc",
        summary: "Start GC (admin)",
        public: false,
        params: &[],
        request: &[],
        ok: &[(202, "started", &[Body::Json("JobStarted")])],
        errors: &[E::Forbidden, E::Unavailable],
    },
    Operation {
        method: "post",
        path: "/v1/admin/verify",
        summary: "Start verify (admin): every chunk, a random fraction, or those not verified for N days",
        public: false,
        params: &[],
        request: &[Body::Json("VerifyRequest")],
        ok: &[(202, "started", &[Body::Json("JobStarted")])],
        errors: &[E::Forbidden, E::TooLarge, E::UnsupportedType, E::InvalidBody],
    },
    Operation {
        method: "post",
        path: "/v1/admin/prune",
        summary: "Apply retention policies (admin); dry_run required",
        public: false,
        params: &[],
        request: &[Body::Json("PruneRequest")],
        ok: &[(200, "per source: policy, kept, pruned, skipped", &[Body::Json("PruneReport")])],
        errors: &[
            E::Forbidden,
            E::TooLarge,
            E::UnsupportedType,
            E::InvalidBody,
            E::Unavailable,
        ],
    },
    Operation {
        method: "get",
        path: "/v1/admin/jobs/{id}",
        summary: "A job's state, progress and result (admin)",
        public: false,
        params: &[path("id", string, "job id")],
        request: &[],
        ok: &[(200, "ok", &[Body::Json("JobStatus")])],
        errors: &[E::Forbidden, E::NotFound],
    },
    Operation {
        method: "get",
        path: "/v1/admin/retention",
        summary: "Retention settings (admin): immutability window, schedule, default, every source's policy and its origin",
        public: false,
        params: &[],
        request: &[],
        ok: &[(200, "ok", &[Body::Json("RetentionView")])],
        errors: &[E::Forbidden],
    },
    Operation {
        method: "put",
        path: "/v1/admin/retention/{source}",
        summary: "Set a source's retention policy (admin); all zero opts the source out of pruning",
        public: false,
        params: &[SOURCE],
        request: &[Body::Json("Policy")],
        ok: &[(200, "the policy now in force", &[Body::Json("PolicySet")])],
        errors: &[
            E::BadRequest,
            E::Forbidden,
            E::TooLarge,
            E::UnsupportedType,
            E::InvalidBody,
        ],
    },
    Operation {
        method: "delete",
        path: "/v1/admin/retention/{source}",
        summary: "Drop the policy set over the API (admin); the config's applies again",
        public: false,
        params: &[SOURCE],
        request: &[],
        ok: &[(204, "removed", &[])],
        errors: &[E::BadRequest, E::Forbidden, E::NotFound],
    },
];

fn reference(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn content(bodies: &[Body]) -> Value {
    let mut c = Map::new();
    for b in bodies {
        let (media, schema) = match *b {
            Body::Json(n) => ("application/json", reference(n)),
            Body::JsonArray(n) => (
                "application/json",
                json!({ "type": "array", "items": reference(n) }),
            ),
            Body::AnyJson => ("application/json", json!({ "type": "object" })),
            Body::Bytes(media, what) => (
                media,
                json!({ "type": "string", "format": "binary", "description": what }),
            ),
            Body::Text => ("text/plain", string()),
        };
        c.insert(media.to_owned(), json!({ "schema": schema }));
    }
    Value::Object(c)
}

fn operation(op: &Operation) -> Value {
    let mut responses = Map::new();
    for (status, description, bodies) in op.ok {
        let mut r = json!({ "description": description });
        if !bodies.is_empty() {
            r["content"] = content(bodies);
        }
        responses.insert(status.to_string(), r);
    }
    let mut errors: BTreeMap<u16, Vec<String>> = BTreeMap::new();
    let unauthorized = (!op.public).then_some(ErrorCode::Unauthorized);
    for code in op.errors.iter().copied().chain(unauthorized) {
        let list = errors.entry(code.status()).or_default();
        if !list.contains(&code.as_str()) {
            list.push(code.as_str());
        }
    }
    for (status, codes) in errors {
        responses.insert(
            status.to_string(),
            json!({
                "description": format!("error: {}", codes.join(", ")),
                "content": content(&[Body::Json("ErrorBody")]),
            }),
        );
    }
    let mut o = json!({
        "summary": op.summary,
        "operationId": format!("{}{}", op.method, op.path.replace(['/', '{', '}', '.', '-'], "_")),
        "responses": responses,
    });
    if op.public {
        o["security"] = json!([]);
    }
    if !op.params.is_empty() {
        o["parameters"] = op
            .params
            .iter()
            .map(|p| {
                json!({
                    "name": p.name, "in": p.at, "required": p.required,
                    "schema": (p.schema)(), "description": p.description,
                })
            })
            .collect();
    }
    if !op.request.is_empty() {
        let required = !matches!(op.path, "/v1/admin/verify");
        o["requestBody"] = json!({ "required": required, "content": content(op.request) });
    }
    o
}

/// The document, built once.
pub fn document() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut paths = Map::new();
        for op in OPERATIONS {
            let item = paths
                .entry(op.path.to_owned())
                .or_insert_with(|| json!({}));
            item[op.method] = operation(op);
        }
        let components = serde_json::to_value(Schemas::openapi().components)
            .unwrap_or_else(|_| json!({}));
        let mut components = match components {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        components.insert(
            "securitySchemes".into(),
            json!({ "bearer": { "type": "http", "scheme": "bearer" } }),
        );
        json!({
            "openapi": "3.1.0",
            "info": {
                "title": "Backup repository API",
                "version": schema::API_VERSION.to_string(),
                "description": "Protocol v1 between source movers and repositories (repo-server, gateway), \
                    and the storage admin's console. Generated from the schema types; see PROTOCOL.md \
                    and docs/API.md.",
            },
            "security": [{ "bearer": [] }],
            "paths": paths,
            "components": components,
        })
    })
}

/// The document as served.
pub fn text() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| {
        let mut s = serde_json::to_string_pretty(document()).unwrap_or_default();
        s.push('\n');
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    match (k.as_str(), x) {
                        ("$ref", Value::String(r)) => out.push(r.clone()),
                        _ => refs(x, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
            _ => {}
        }
    }

    #[test]
    fn operations_are_the_routes_and_every_reference_resolves() {
        let mut ops: Vec<(&str, &str)> = OPERATIONS.iter().map(|o| (o.method, o.path)).collect();
        let mut routes = super::super::ROUTES.to_vec();
        ops.sort_unstable();
        routes.sort_unstable();
        assert_eq!(ops, routes);
        let doc = document();
        let mut all = Vec::new();
        refs(doc, &mut all);
        assert!(!all.is_empty());
        for r in all {
            let name = r
                .strip_prefix("#/components/schemas/")
                .expect("a component reference");
            assert!(
                doc["components"]["schemas"].get(name).is_some(),
                "{r} does not resolve"
            );
        }
        let codes = doc["components"]["schemas"]["ErrorCode"]["enum"]
            .as_array()
            .map(Vec::len);
        assert_eq!(codes, Some(ErrorCode::ALL.len()));
    }
}
