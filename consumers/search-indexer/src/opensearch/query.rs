//! A search as OpenSearch's query DSL, and its answer as the API's page (pure), so the
//! OpenSearch backend answers what the embedded index answers: the same words required,
//! phrases, `-excluded` words and `title:word`, near words and word beginnings ranked below
//! exact matches, the same visibility rule and the same snippets.

use serde_json::{Value, json};

use crate::documents::{Document, Visibility};
use crate::index::{Caller, Hit, Page, SearchError, SearchRequest};

/// The longest snippet, in characters, as the embedded index makes them.
const SNIPPET_CHARS: u64 = 160;

/// Whether `q` is plain words, with none of the query syntax: only then do near words and
/// word beginnings also match (with syntax, a near-word clause could let back a document an
/// `-excluded` word removed).
fn plain(q: &str) -> bool {
    !q.chars().any(|c| {
        matches!(
            c,
            '"' | ':'
                | '-'
                | '+'
                | '('
                | ')'
                | '*'
                | '~'
                | '^'
                | '['
                | ']'
                | '{'
                | '}'
                | '\\'
                | '/'
                | '!'
                | '?'
                | '&'
                | '|'
        )
    })
}

/// The fields a query may name (`title:tea`), as in the embedded index: naming another
/// (`owner:bob`) is the caller's mistake, and reaches no field the caller should not query.
const SEARCHABLE: [&str; 2] = ["title", "body"];

/// The first field named in `q` (`name:` outside quotes) that is not searchable, patterns
/// (`*:`, `o*:`) included.
fn unsearchable_field(q: &str) -> Option<String> {
    let mut quoted = false;
    let mut name = String::new();
    for c in q.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                name.clear();
            }
            ':' if !quoted => {
                if !SEARCHABLE.contains(&name.as_str()) {
                    return Some(name);
                }
                name.clear();
            }
            c if !quoted && (c.is_alphanumeric() || matches!(c, '_' | '.' | '*' | '?')) => {
                name.push(c);
            }
            _ => name.clear(),
        }
    }
    None
}

/// What the OpenSearch syntax offers beyond the API's and costs or escapes too much: regular
/// expressions (`/.../`, a scan of every term) and backslash escapes (which would let a
/// quote or a colon through the field check).
fn beyond_the_syntax(q: &str) -> Option<char> {
    q.chars().find(|c| matches!(c, '/' | '\\'))
}

/// The request body of `POST /<index>/_search` for `request` by `caller`.
pub fn body(request: &SearchRequest<'_>, caller: &Caller<'_>) -> Result<Value, SearchError> {
    let text = request.q.trim();
    if text.is_empty() {
        return Err(SearchError::Query(
            "q is empty: say what to search for".into(),
        ));
    }
    if let Some(c) = beyond_the_syntax(text) {
        return Err(SearchError::Query(format!(
            "q: {c:?} is not part of the query syntax (words, \"phrases\", -excluded, title:word)"
        )));
    }
    if let Some(field) = unsearchable_field(text) {
        return Err(SearchError::Query(format!(
            "q: field {field:?} does not exist: title and body can be searched"
        )));
    }
    let mut matching = vec![json!({"query_string": {
        "query": text,
        "fields": ["title^2", "body"],
        "default_operator": "AND",
        "allow_leading_wildcard": false,
        "lenient": false,
    }})];
    if plain(text) {
        matching.push(json!({"multi_match": {
            "query": text, "fields": ["title", "body"], "operator": "and",
            "fuzziness": 1, "prefix_length": 0, "boost": 0.5,
        }}));
        matching.push(json!({"multi_match": {
            "query": text, "fields": ["title", "body"], "operator": "and",
            "type": "bool_prefix", "boost": 0.5,
        }}));
    }
    let mut filters = vec![json!({"term": {"deleted": false}})];
    if let Some(kind) = request.kind {
        filters.push(json!({"term": {"kind": kind}}));
    }
    for filter in request.fields {
        if !filter.contains(':') {
            return Err(SearchError::Query(format!(
                "field filter {filter:?} must be name:value (status:shipped)"
            )));
        }
        filters.push(json!({"term": {"facets": filter}}));
    }
    if !caller.admin {
        filters.push(json!({"bool": {"minimum_should_match": 1, "should": [
            {"term": {"visibility": Visibility::Public.as_str()}},
            {"bool": {"filter": [
                {"term": {"visibility": Visibility::Owner.as_str()}},
                {"term": {"owner": caller.subject}},
            ]}},
        ]}}));
    }
    Ok(json!({
        "from": request.offset,
        "size": request.limit,
        "track_total_hits": true,
        // A search that has not answered by then answers 503 (a timed-out answer is partial).
        "timeout": "5s",
        "query": {"bool": {
            "must": [{"bool": {"should": matching, "minimum_should_match": 1}}],
            "filter": filters,
        }},
        "highlight": {
            "pre_tags": ["<b>"], "post_tags": ["</b>"], "encoder": "html",
            "fields": {"body": {"fragment_size": SNIPPET_CHARS, "number_of_fragments": 1}},
        },
        "_source": {"includes": ["document"]},
    }))
}

/// The page in `answer` (a `_search` response).
pub fn page(answer: &Value) -> Result<Page, SearchError> {
    let failed = |what: &str| SearchError::Failed(format!("the search answer lacks {what}"));
    let hits = &answer["hits"];
    let total = hits["total"]["value"]
        .as_u64()
        .ok_or_else(|| failed("hits.total"))?;
    let mut items = Vec::new();
    for hit in hits["hits"].as_array().ok_or_else(|| failed("hits"))? {
        let document: Document = serde_json::from_value(hit["_source"]["document"].clone())
            .map_err(|e| SearchError::Failed(format!("a stored document: {e}")))?;
        let snippet = hit["highlight"]["body"][0]
            .as_str()
            .unwrap_or_default()
            .to_string();
        items.push(Hit {
            id: document.id,
            kind: document.kind,
            title: document.title,
            snippet,
            fields: document.fields.into_iter().collect(),
            updated_at_ms: document.updated_at_ms,
            score: hit["_score"].as_f64().unwrap_or_default() as f32,
        });
    }
    Ok(Page {
        items,
        total: usize::try_from(total).unwrap_or(usize::MAX),
    })
}

/// Why OpenSearch refused a search: the query's fault (a 400 naming it) or the cluster's.
pub fn refused(status: u16, answer: &Value) -> SearchError {
    let reason = answer["error"]["root_cause"][0]["reason"]
        .as_str()
        .or_else(|| answer["error"]["reason"].as_str())
        .unwrap_or("refused")
        .to_string();
    if status == 400 {
        SearchError::Query(format!("q: {reason}"))
    } else {
        SearchError::Failed(format!("{status}: {reason}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request<'a>(q: &'a str, fields: &'a [String]) -> SearchRequest<'a> {
        SearchRequest {
            q,
            kind: Some("order"),
            fields,
            limit: 20,
            offset: 40,
        }
    }

    #[test]
    fn a_user_finds_public_documents_and_their_own_only() {
        let caller = Caller {
            subject: "alice",
            admin: false,
        };
        let body = body(&request("tea", &[]), &caller).unwrap();
        let filters = body["query"]["bool"]["filter"].as_array().unwrap();
        assert_eq!(filters[0], json!({"term": {"deleted": false}}));
        assert_eq!(filters[1], json!({"term": {"kind": "order"}}));
        let visibility = filters[2].to_string();
        assert!(
            visibility.contains(r#"{"term":{"owner":"alice"}}"#),
            "{visibility}"
        );
        assert!(visibility.contains(r#"{"term":{"visibility":"public"}}"#));
        assert_eq!(
            (body["from"].clone(), body["size"].clone()),
            (json!(40), json!(20))
        );
        let admin = Caller {
            subject: "root",
            admin: true,
        };
        let body = super::body(&request("tea", &[]), &admin).unwrap();
        assert_eq!(body["query"]["bool"]["filter"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn near_words_count_only_for_plain_words() {
        let caller = Caller {
            subject: "a",
            admin: true,
        };
        let clauses = |q: &str| {
            body(&request(q, &[]), &caller).unwrap()["query"]["bool"]["must"][0]["bool"]["should"]
                .as_array()
                .unwrap()
                .len()
        };
        assert_eq!(clauses("green tea"), 3);
        assert_eq!(clauses("tea -green"), 1);
        assert_eq!(clauses("\"green tea\""), 1);
        assert_eq!(clauses("title:tea"), 1);
    }

    #[test]
    fn a_filter_without_a_colon_and_an_empty_query_are_the_callers_mistakes() {
        let caller = Caller {
            subject: "a",
            admin: true,
        };
        let fields = vec!["shipped".to_string()];
        assert!(matches!(
            body(&request("tea", &fields), &caller),
            Err(SearchError::Query(_))
        ));
        assert!(matches!(
            body(&request("  ", &[]), &caller),
            Err(SearchError::Query(_))
        ));
        let refusal = json!({"error": {"root_cause": [{"reason": "Cannot parse 'a AND'"}]}});
        assert!(
            matches!(refused(400, &refusal), SearchError::Query(r) if r.contains("Cannot parse"))
        );
        assert!(matches!(refused(503, &refusal), SearchError::Failed(_)));
    }

    #[test]
    fn only_title_and_body_may_be_named_in_a_query() {
        assert_eq!(unsearchable_field("title:tea body:mug"), None);
        assert_eq!(unsearchable_field("\"owner:bob\" tea"), None);
        assert_eq!(
            unsearchable_field("tea owner:bob").as_deref(),
            Some("owner")
        );
        assert_eq!(
            unsearchable_field("nofield:tea").as_deref(),
            Some("nofield")
        );
        let caller = Caller {
            subject: "a",
            admin: false,
        };
        assert!(matches!(
            body(&request("subjects:alice", &[]), &caller),
            Err(SearchError::Query(reason)) if reason.starts_with("q:")
        ));
    }

    #[test]
    fn an_answer_becomes_the_apis_page_with_its_snippet() {
        let answer = json!({"hits": {"total": {"value": 41}, "hits": [{
            "_score": 1.5,
            "_source": {"document": {
                "id": "order:o-1", "kind": "order", "title": "Order o-1", "body": "tea mug",
                "owner": "alice", "visibility": "owner", "fields": [["status", "placed"]],
                "updated_at_ms": 7, "subjects": []}},
            "highlight": {"body": ["<b>tea</b> mug"]},
        }]}});
        let page = page(&answer).unwrap();
        assert_eq!(page.total, 41);
        assert_eq!(page.items[0].id, "order:o-1");
        assert_eq!(page.items[0].snippet, "<b>tea</b> mug");
        assert_eq!(page.items[0].fields["status"], "placed");
    }
}
