//! The API's OpenAPI 3.1 document, declared next to the handlers.
//!
//! Each service describes its own routes beside its router, as a list of [`Operation`]s in an
//! [`Api`]; the binary puts the services' parts together into one [`document`]. A route a
//! router serves and no part describes fails a test (`tests/openapi.rs`), and the schemas
//! written here are checked against real answers by schemathesis, so a description that
//! drifts from its handler fails too.
//!
//! What every route can answer whatever its handler does (the edge's rate limit, an
//! overloaded or timed-out request, a body that is not JSON or too large) is added by
//! [`document`], so each operation lists only what its own handler decides.

use serde_json::{Map, Value, json};

/// One service's part of the document: its tag, its operations and the named schemas they
/// refer to as `#/components/schemas/<name>`.
pub struct Api {
    pub tag: &'static str,
    pub description: &'static str,
    pub operations: Vec<Operation>,
    pub schemas: Vec<(&'static str, Value)>,
}

/// One method on one path, as the OpenAPI document describes it.
#[derive(Debug, Clone)]
pub struct Operation {
    pub method: &'static str,
    pub path: &'static str,
    object: Map<String, Value>,
}

impl Operation {
    fn new(method: &'static str, path: &'static str, summary: &str) -> Self {
        let mut object = Map::new();
        object.insert("summary".into(), summary.into());
        object.insert("responses".into(), Value::Object(Map::new()));
        Self {
            method,
            path,
            object,
        }
    }

    pub fn get(path: &'static str, summary: &str) -> Self {
        Self::new("get", path, summary)
    }

    pub fn post(path: &'static str, summary: &str) -> Self {
        Self::new("post", path, summary)
    }

    pub fn put(path: &'static str, summary: &str) -> Self {
        Self::new("put", path, summary)
    }

    pub fn patch(path: &'static str, summary: &str) -> Self {
        Self::new("patch", path, summary)
    }

    pub fn delete(path: &'static str, summary: &str) -> Self {
        Self::new("delete", path, summary)
    }

    /// Longer prose: what the route is for and what it promises.
    pub fn describe(mut self, text: &str) -> Self {
        self.object.insert("description".into(), text.into());
        self
    }

    /// No token needed (a token sent anyway is ignored by the handler).
    pub fn public(mut self) -> Self {
        self.object.insert("security".into(), json!([]));
        self
    }

    /// A bearer token is needed; `who` says which callers the handler lets through, and a
    /// missing or invalid token is answered 401.
    pub fn bearer(mut self, who: &str) -> Self {
        self.object
            .insert("security".into(), json!([{ "bearer": [] }]));
        self.object.insert("x-herald-access".into(), who.into());
        self.problem(401, "Missing, malformed, expired or revoked token")
    }

    fn parameter(
        mut self,
        location: &str,
        name: &str,
        required: bool,
        schema: Value,
        doc: &str,
    ) -> Self {
        let parameters = self.object.entry("parameters").or_insert_with(|| json!([]));
        if let Value::Array(list) = parameters {
            list.push(object([
                ("name", name.into()),
                ("in", location.into()),
                ("required", required.into()),
                ("schema", schema),
                ("description", doc.into()),
            ]));
        }
        self
    }

    /// A `{name}` segment of the path.
    pub fn path_param(self, name: &str, schema: Value, doc: &str) -> Self {
        self.parameter("path", name, true, schema, doc)
    }

    /// An optional query parameter.
    pub fn query(self, name: &str, schema: Value, doc: &str) -> Self {
        self.parameter("query", name, false, schema, doc)
    }

    /// A query parameter the request must carry.
    pub fn required_query(self, name: &str, schema: Value, doc: &str) -> Self {
        self.parameter("query", name, true, schema, doc)
    }

    /// An optional request header.
    pub fn header(self, name: &str, schema: Value, doc: &str) -> Self {
        self.parameter("header", name, false, schema, doc)
    }

    /// A JSON request body of `schema`, required. A body that is not JSON, too large or
    /// malformed is answered 415, 413 or 400.
    pub fn json_body(mut self, schema: Value) -> Self {
        self.object.insert(
            "requestBody".into(),
            object([
                ("required", true.into()),
                (
                    "content",
                    object([("application/json", object([("schema", schema)]))]),
                ),
            ]),
        );
        self.problem(400, "The body is not JSON of the documented shape")
            .problem(413, "The body is larger than the route accepts")
            .problem(415, "The body is not application/json")
    }

    /// A success answer with a JSON body of `schema`.
    pub fn ok(self, status: u16, description: &str, schema: Value) -> Self {
        self.content(status, description, "application/json", schema)
    }

    /// A success answer with a body of another media type.
    pub fn content(mut self, status: u16, description: &str, media: &str, schema: Value) -> Self {
        self.response(
            status,
            object([
                ("description", description.into()),
                ("content", object([(media, object([("schema", schema)]))])),
            ]),
        );
        self
    }

    /// A success answer whose body is one of several media types (which one depends on the
    /// request, such as the file name asked for), each with its schema.
    pub fn content_types(
        mut self,
        status: u16,
        description: &str,
        media: &[(&str, Value)],
    ) -> Self {
        let content: Map<String, Value> = media
            .iter()
            .map(|(media, schema)| ((*media).to_string(), json!({ "schema": schema })))
            .collect();
        self.response(
            status,
            json!({"description": description, "content": Value::Object(content)}),
        );
        self
    }

    /// A success answer without a body.
    pub fn empty(mut self, status: u16, description: &str) -> Self {
        self.response(status, json!({ "description": description }));
        self
    }

    /// An error answer, as problem+json; `when` says when the handler gives it. Several
    /// reasons for one status are joined.
    pub fn problem(mut self, status: u16, when: &str) -> Self {
        let key = status.to_string();
        let existing = self
            .object
            .get("responses")
            .and_then(|r| r.get(&key))
            .and_then(|r| r.get("description"))
            .and_then(Value::as_str)
            .map(str::to_string);
        let description = match existing {
            Some(before) if before.contains(when) => before,
            Some(before) => format!("{before}; {when}"),
            None => when.to_string(),
        };
        self.response(
            status,
            json!({"description": description, "content": {
                "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}),
        );
        self
    }

    fn response(&mut self, status: u16, response: Value) {
        if let Some(Value::Object(responses)) = self.object.get_mut("responses") {
            responses.insert(status.to_string(), response);
        }
    }

    fn has(&self, key: &str) -> bool {
        self.object.contains_key(key)
    }
}

/// The problem+json body every error has (RFC 9457).
fn problem_schema() -> Value {
    json!({
        "type": "object",
        "required": ["type", "title", "status", "detail"],
        "properties": {
            "type": {"type": "string", "description": "urn:herald:problem:<slug>: what to match on"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string", "description": "what was wrong and how to fix it"},
            "errors": {"type": "array", "items": {
                "type": "object", "required": ["pointer", "message"],
                "properties": {"pointer": {"type": "string"}, "message": {"type": "string"}}}}
        }
    })
}

/// The whole document: `info`, then every part's operations under their paths, each with
/// the answers every route can give whatever its handler does.
pub fn document(info: Value, apis: &[Api]) -> Value {
    let mut paths: Map<String, Value> = Map::new();
    let mut schemas: Map<String, Value> = Map::new();
    schemas.insert("Problem".into(), problem_schema());
    let mut tags = Vec::new();
    for api in apis {
        tags.push(json!({"name": api.tag, "description": api.description}));
        for (name, schema) in &api.schemas {
            schemas.insert((*name).to_string(), schema.clone());
        }
        for operation in &api.operations {
            let mut operation = operation
                .clone()
                .problem(429, "Over the caller's rate limit: retry after Retry-After")
                .problem(
                    503,
                    "Overloaded, timed out, or a store it needs is unreachable: retry after Retry-After",
                );
            if !operation.has("security") {
                operation = operation.public();
            }
            operation.object.insert("tags".into(), json!([api.tag]));
            operation.object.insert(
                "operationId".into(),
                operation_id(operation.method, operation.path).into(),
            );
            let entry = paths
                .entry(operation.path.to_string())
                .or_insert_with(|| json!({}));
            entry[operation.method] = Value::Object(operation.object);
        }
    }
    object([
        ("openapi", "3.1.0".into()),
        ("info", info),
        ("tags", tags.into()),
        ("paths", paths.into()),
        (
            "components",
            object([
                (
                    "securitySchemes",
                    json!({"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}}),
                ),
                ("schemas", schemas.into()),
            ]),
        ),
    ])
}

/// A JSON object of `members`, moved in (`json!` would copy them).
fn object<const N: usize>(members: [(&str, Value); N]) -> Value {
    Value::Object(
        members
            .into_iter()
            .map(|(key, value)| (key.to_string(), value))
            .collect(),
    )
}

/// `get /api/v1/users/{id}` → `get_users_id`: unique per method and path.
fn operation_id(method: &str, path: &str) -> String {
    let path = path
        .trim_start_matches("/api/v1")
        .replace(['{', '}', '.'], "")
        .replace(['/', '-'], "_");
    format!("{method}{}", path.trim_end_matches('_'))
        .trim_end_matches('_')
        .to_string()
}

/// Every (method, path) the document describes, in order.
pub fn operations(document: &Value) -> Vec<(String, String)> {
    let mut found = Vec::new();
    if let Some(paths) = document["paths"].as_object() {
        for (path, item) in paths {
            for method in item.as_object().into_iter().flat_map(|m| m.keys()) {
                found.push((method.to_uppercase(), path.clone()));
            }
        }
    }
    found
}

/// A reference page for people: every operation by tag, its access, parameters, body and
/// answers, rendered on the server from the document itself (no script, nothing fetched
/// from elsewhere).
pub fn reference_page(document: &Value) -> String {
    let mut page = String::new();
    let title = document["info"]["title"].as_str().unwrap_or("API");
    page.push_str(&format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{t} reference</title><style>{STYLE}</style></head><body><main>\
         <h1>{t}</h1><p>{d}</p><p>The machine-readable document: \
         <a href=\"/api/v1/openapi.json\">/api/v1/openapi.json</a> (OpenAPI 3.1).</p>",
        t = escape(title),
        d = escape(document["info"]["description"].as_str().unwrap_or_default()),
    ));
    let tags: Vec<&Value> = document["tags"].as_array().into_iter().flatten().collect();
    page.push_str("<nav><ul>");
    for tag in &tags {
        let name = tag["name"].as_str().unwrap_or_default();
        page.push_str(&format!(
            "<li><a href=\"#tag-{n}\">{n}</a></li>",
            n = escape(name)
        ));
    }
    page.push_str("<li><a href=\"#schemas\">schemas</a></li></ul></nav>");
    for tag in tags {
        let name = tag["name"].as_str().unwrap_or_default();
        page.push_str(&format!(
            "<section id=\"tag-{n}\"><h2>{n}</h2><p>{d}</p>",
            n = escape(name),
            d = escape(tag["description"].as_str().unwrap_or_default())
        ));
        for (path, item) in document["paths"].as_object().into_iter().flatten() {
            for (method, operation) in item.as_object().into_iter().flatten() {
                let in_tag = operation["tags"]
                    .as_array()
                    .is_some_and(|t| t.iter().any(|t| t == name));
                if in_tag {
                    page.push_str(&operation_html(method, path, operation));
                }
            }
        }
        page.push_str("</section>");
    }
    page.push_str(
        "<section id=\"schemas\"><h2>Schemas</h2><p>What <code>$ref</code> names above.</p>",
    );
    for (name, schema) in document["components"]["schemas"]
        .as_object()
        .into_iter()
        .flatten()
    {
        page.push_str(&format!(
            "<details id=\"schema-{n}\"><summary><code>#/components/schemas/{n}</code></summary><pre>{s}</pre></details>",
            n = escape(name),
            s = escape(&serde_json::to_string_pretty(schema).unwrap_or_default())
        ));
    }
    page.push_str("</section></main></body></html>");
    page
}

fn operation_html(method: &str, path: &str, operation: &Value) -> String {
    let mut html = format!(
        "<article class=\"operation\" id=\"{id}\"><h3><span class=\"method {m}\">{M}</span> \
         <code class=\"path\">{p}</code></h3><p class=\"summary\">{s}</p>",
        id = escape(operation["operationId"].as_str().unwrap_or_default()),
        m = escape(method),
        M = escape(&method.to_uppercase()),
        p = escape(path),
        s = escape(operation["summary"].as_str().unwrap_or_default()),
    );
    if let Some(text) = operation["description"].as_str() {
        html.push_str(&format!("<p>{}</p>", escape(text)));
    }
    let access = match operation["x-herald-access"].as_str() {
        Some(who) => format!("Bearer token: {who}"),
        None => "No token needed".to_string(),
    };
    html.push_str(&format!("<p class=\"access\">{}</p>", escape(&access)));
    if let Some(parameters) = operation["parameters"].as_array() {
        html.push_str("<table><tr><th>Parameter</th><th>In</th><th>Schema</th><th></th></tr>");
        for p in parameters {
            html.push_str(&format!(
                "<tr><td><code>{}</code>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td></tr>",
                escape(p["name"].as_str().unwrap_or_default()),
                if p["required"] == true {
                    " (required)"
                } else {
                    ""
                },
                escape(p["in"].as_str().unwrap_or_default()),
                escape(&p["schema"].to_string()),
                escape(p["description"].as_str().unwrap_or_default()),
            ));
        }
        html.push_str("</table>");
    }
    if let Some(body) =
        operation["requestBody"]["content"]["application/json"]["schema"].as_object()
    {
        html.push_str(&format!(
            "<details><summary>Request body (application/json)</summary><pre>{}</pre></details>",
            escape(&serde_json::to_string_pretty(body).unwrap_or_default())
        ));
    }
    html.push_str("<table><tr><th>Status</th><th>Answer</th></tr>");
    for (status, response) in operation["responses"].as_object().into_iter().flatten() {
        let media = response["content"]
            .as_object()
            .and_then(|c| c.keys().next().cloned())
            .unwrap_or_default();
        html.push_str(&format!(
            "<tr><td>{}</td><td>{} <small>{}</small></td></tr>",
            escape(status),
            escape(response["description"].as_str().unwrap_or_default()),
            escape(&media),
        ));
    }
    html.push_str("</table>");
    for (status, response) in operation["responses"].as_object().into_iter().flatten() {
        for (media, content) in response["content"].as_object().into_iter().flatten() {
            if status.starts_with('2') && content["schema"].is_object() {
                html.push_str(&format!(
                    "<details><summary>{} answer ({})</summary><pre>{}</pre></details>",
                    escape(status),
                    escape(media),
                    escape(&serde_json::to_string_pretty(&content["schema"]).unwrap_or_default())
                ));
            }
        }
    }
    html.push_str("</article>");
    html
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:0;color:#1b1b1b}\
main{max-width:60rem;margin:auto;padding:1rem 2rem}nav ul{display:flex;flex-wrap:wrap;gap:1rem;\
list-style:none;padding:0}h2{border-bottom:1px solid #ccc;margin-top:2.5rem}\
.operation{border:1px solid #ddd;border-radius:6px;padding:0 1rem 1rem;margin:1rem 0}\
.method{font-family:monospace;padding:.1rem .4rem;border-radius:4px;color:#fff;background:#555}\
.get{background:#1f6feb}.post{background:#2da44e}.put,.patch{background:#bf8700}\
.delete{background:#cf222e}table{border-collapse:collapse;width:100%;margin:.5rem 0}\
td,th{border-bottom:1px solid #eee;text-align:left;padding:.25rem .5rem;vertical-align:top}\
pre{background:#f6f8fa;padding:.5rem;overflow:auto}.access{font-style:italic}";

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Value {
        document(
            json!({"title": "T", "version": "1"}),
            &[Api {
                tag: "things",
                description: "Things <b>",
                operations: vec![
                    Operation::get("/api/v1/things/{id}", "One thing")
                        .bearer("the owner, or admin")
                        .path_param("id", json!({"type": "string"}), "its id")
                        .ok(200, "The thing", json!({"type": "object"}))
                        .problem(404, "No such thing")
                        .problem(404, "Gone"),
                    Operation::post("/api/v1/things", "Make one")
                        .json_body(json!({"type": "object"}))
                        .empty(204, "Made"),
                ],
                schemas: vec![],
            }],
        )
    }

    #[test]
    fn every_operation_gets_the_edges_answers_an_id_and_security() {
        let doc = sample();
        let get = &doc["paths"]["/api/v1/things/{id}"]["get"];
        for status in ["200", "401", "404", "429", "503"] {
            assert!(get["responses"][status].is_object(), "{status}");
        }
        assert_eq!(
            get["responses"]["404"]["description"],
            "No such thing; Gone"
        );
        assert_eq!(get["operationId"], "get_things_id");
        assert_eq!(get["security"], json!([{"bearer": []}]));
        let post = &doc["paths"]["/api/v1/things"]["post"];
        assert_eq!(post["security"], json!([]));
        for status in ["204", "400", "413", "415"] {
            assert!(post["responses"][status].is_object(), "{status}");
        }
        assert_eq!(
            operations(&doc),
            vec![
                ("POST".to_string(), "/api/v1/things".to_string()),
                ("GET".to_string(), "/api/v1/things/{id}".to_string())
            ]
        );
    }

    #[test]
    fn the_reference_page_escapes_what_it_shows() {
        let page = reference_page(&sample());
        assert!(page.contains("Things &lt;b&gt;"));
        assert!(page.contains("<code class=\"path\">/api/v1/things/{id}</code>"));
        assert!(!page.contains("<b>"));
    }
}
