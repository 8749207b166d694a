//! The `admission.k8s.io/v1` `AdmissionReview` wire format, reduced to what a mutating Pod
//! webhook reads and writes. Own types rather than kube's so that the JSON Patch type is the
//! one the planner builds (json-patch 5) and so that hostile input is rejected with our own
//! messages.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `apiVersion` of the reviews this webhook accepts and answers.
pub const ADMISSION_API_VERSION: &str = "admission.k8s.io/v1";
/// `kind` of the review.
pub const ADMISSION_KIND: &str = "AdmissionReview";
/// `patchType` of a response with a patch.
pub const PATCH_TYPE: &str = "JSONPatch";

/// An `AdmissionReview` as the apiserver sends it.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionReview {
    /// Must be [`ADMISSION_API_VERSION`].
    pub api_version: String,
    /// Must be [`ADMISSION_KIND`].
    pub kind: String,
    /// The request (absent only in malformed reviews).
    pub request: Option<AdmissionRequest>,
}

/// Group, version and kind of the object under review.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct GroupVersionKind {
    /// API group (empty for the core group).
    #[serde(default)]
    pub group: String,
    /// API version.
    #[serde(default)]
    pub version: String,
    /// Kind.
    #[serde(default)]
    pub kind: String,
}

/// One admission request.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionRequest {
    /// Identifies the request; copied into the response.
    pub uid: String,
    /// The object's kind.
    #[serde(default)]
    pub kind: GroupVersionKind,
    /// `CREATE`, `UPDATE`, `DELETE` or `CONNECT`.
    #[serde(default)]
    pub operation: String,
    /// The object's namespace.
    #[serde(default)]
    pub namespace: Option<String>,
    /// The object's name (often empty on CREATE with `generateName`).
    #[serde(default)]
    pub name: Option<String>,
    /// The object as it will be stored (before this webhook's patch), unparsed: the decider
    /// reads it straight into its own type, without an intermediate JSON tree.
    #[serde(default)]
    pub object: Option<Box<serde_json::value::RawValue>>,
    /// The object as stored before an UPDATE, unparsed.
    #[serde(default)]
    pub old_object: Option<Box<serde_json::value::RawValue>>,
    /// The subresource (`ephemeralcontainers`), empty for the object itself.
    #[serde(default)]
    pub sub_resource: Option<String>,
    /// True for `--dry-run=server` requests: no side effects allowed (this webhook has none).
    #[serde(default)]
    pub dry_run: Option<bool>,
}

impl AdmissionRequest {
    /// The object's `metadata.name`, else its `generateName` prefix (CREATE often has only
    /// that), for logs. Reads only the metadata.
    pub fn object_name(&self) -> String {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Meta {
            #[serde(default)]
            name: Option<String>,
            #[serde(default)]
            generate_name: Option<String>,
        }
        #[derive(Deserialize)]
        struct Object {
            #[serde(default)]
            metadata: Option<Meta>,
        }
        if let Some(name) = self.name.as_deref().filter(|n| !n.is_empty()) {
            return name.to_owned();
        }
        let meta = self
            .object
            .as_ref()
            .and_then(|raw| serde_json::from_str::<Object>(raw.get()).ok())
            .and_then(|o| o.metadata);
        let (name, generate_name) = meta.map_or((None, None), |m| (m.name, m.generate_name));
        self.object_name_from(name.as_deref(), generate_name.as_deref())
    }

    /// [`AdmissionRequest::object_name`] from metadata the caller has already read (the
    /// decider has the parsed pod): without scanning the object again.
    pub fn object_name_from(&self, name: Option<&str>, generate_name: Option<&str>) -> String {
        [self.name.as_deref(), name, generate_name]
            .into_iter()
            .flatten()
            .find(|n| !n.is_empty())
            .unwrap_or_default()
            .to_owned()
    }
}

/// The `status` of a response: the message a denied client sees.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ResponseStatus {
    /// HTTP-style code (403 for a denial, 400 for a bad request).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<u16>,
    /// What a person reads.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Machine-readable reason.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

/// One admission response.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionResponse {
    /// The request's uid.
    pub uid: String,
    /// Whether the object is admitted.
    pub allowed: bool,
    /// Why not (or nothing).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<ResponseStatus>,
    /// The JSON Patch, when there is one: sent as base64 with `patchType: JSONPatch`, written
    /// by [`AdmissionResponse::to_review_json`] straight into the body (base64 needs no
    /// escaping, and a patch is most of the body).
    #[serde(skip)]
    pub patch: Option<Vec<u8>>,
    /// Warnings shown to the client (`kubectl` prints them).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Key/value pairs added to the apiserver's audit event.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub audit_annotations: BTreeMap<String, String>,
    /// [`AdmissionRequest::object_name`], when the decider read the object anyway: the
    /// server's log line then need not scan the whole object again for it. Not sent.
    #[serde(skip)]
    pub object_name: Option<String>,
}

impl AdmissionResponse {
    /// Admits `uid` unchanged.
    pub fn allow(uid: &str) -> Self {
        AdmissionResponse {
            uid: uid.to_owned(),
            allowed: true,
            ..AdmissionResponse::default()
        }
    }

    /// Denies `uid` with `message` (HTTP 403 to the client).
    pub fn deny(uid: &str, message: impl Into<String>) -> Self {
        AdmissionResponse {
            uid: uid.to_owned(),
            allowed: false,
            status: Some(ResponseStatus {
                code: Some(403),
                message: message.into(),
                reason: "Forbidden".into(),
            }),
            ..AdmissionResponse::default()
        }
    }

    /// Admits `uid` with `patch`, a JSON Patch's bytes, applied (nothing is sent when there
    /// are no bytes).
    pub fn patched(uid: &str, patch: Vec<u8>) -> Self {
        let mut response = AdmissionResponse::allow(uid);
        if !patch.is_empty() {
            response.patch = Some(patch);
        }
        response
    }

    /// Wraps the response in the review envelope the apiserver expects.
    pub fn into_review(mut self) -> serde_json::Value {
        let patch = self.patch.take();
        let mut review = serde_json::json!({
            "apiVersion": ADMISSION_API_VERSION,
            "kind": ADMISSION_KIND,
            "response": self,
        });
        if let Some(patch) = patch {
            review["response"]["patch"] = base64_encode(&patch).into();
            review["response"]["patchType"] = PATCH_TYPE.into();
        }
        review
    }

    /// The review envelope of [`AdmissionResponse::into_review`] as the body sent, written
    /// straight from the response: no intermediate `Value`, and the patch's base64 encoded
    /// into the body rather than into a string that serialising would then scan for escapes.
    ///
    /// # Errors
    /// Only if serialising fails, which strings, booleans and maps cannot.
    pub fn to_review_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        use std::io::Write as _;

        use base64::engine::general_purpose::STANDARD;
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Envelope<'a> {
            api_version: &'static str,
            kind: &'static str,
            response: &'a AdmissionResponse,
        }
        let patch = self.patch.as_deref().unwrap_or_default();
        let mut body = Vec::with_capacity(512 + patch.len().div_ceil(3) * 4);
        serde_json::to_writer(
            &mut body,
            &Envelope {
                api_version: ADMISSION_API_VERSION,
                kind: ADMISSION_KIND,
                response: self,
            },
        )?;
        if self.patch.is_some() {
            // `...,"response":{...}}`: the patch goes in before the two closing braces.
            body.truncate(body.len() - 2);
            body.extend_from_slice(br#","patch":""#);
            {
                let mut base64 = base64::write::EncoderWriter::new(&mut body, &STANDARD);
                base64.write_all(patch).map_err(serde_json::Error::io)?;
                base64.finish().map_err(serde_json::Error::io)?;
            }
            body.extend_from_slice(br#"","patchType":""#);
            body.extend_from_slice(PATCH_TYPE.as_bytes());
            body.extend_from_slice(br#""}}"#);
        }
        Ok(body)
    }
}

/// What the server hands a review to. `admit` is a pure decider; `admit_async` may wait on
/// bounded lookups (image configs) and by default is `admit`.
pub trait Admit: Send + Sync + 'static {
    /// Decides one request.
    fn admit(&self, request: &AdmissionRequest) -> AdmissionResponse;

    /// Decides one request, with lookups that finish within the implementation's budget.
    fn admit_async<'a>(
        &'a self,
        request: &'a AdmissionRequest,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = AdmissionResponse> + Send + 'a>> {
        // Decided when polled, so a panic is caught where the server polls it.
        Box::pin(async move { self.admit(request) })
    }
}

/// Why a body is not a usable `AdmissionReview` (answered with HTTP 400).
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// Not JSON, or not the shape of an `AdmissionReview`.
    #[error("the body is not an AdmissionReview: {0}")]
    Malformed(#[source] serde_json::Error),
    /// Some other `apiVersion`/`kind`.
    #[error(
        "expected apiVersion {ADMISSION_API_VERSION} kind {ADMISSION_KIND}, got {api_version} {kind} (register the webhook with admissionReviewVersions: [v1])"
    )]
    WrongType {
        /// What was sent.
        api_version: String,
        /// What was sent.
        kind: String,
    },
    /// No `request`.
    #[error("the AdmissionReview has no request")]
    NoRequest,
}

/// Parses a request body into the admission request it carries.
pub fn parse(body: &[u8]) -> Result<AdmissionRequest, ReviewError> {
    let review: AdmissionReview = serde_json::from_slice(body).map_err(ReviewError::Malformed)?;
    if review.api_version != ADMISSION_API_VERSION || review.kind != ADMISSION_KIND {
        return Err(ReviewError::WrongType {
            api_version: review.api_version,
            kind: review.kind,
        });
    }
    review.request.ok_or(ReviewError::NoRequest)
}

/// Standard base64 with padding (the encoding of `[]byte` fields in Kubernetes JSON).
pub fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard_encoding() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_encode(input.as_bytes()), want);
        }
    }

    #[test]
    fn reviews_are_parsed_and_bad_ones_named() {
        let ok = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u1","kind":{"group":"","version":"v1","kind":"Pod"},"operation":"CREATE","namespace":"a","object":{}}}"#;
        let request = parse(ok).unwrap();
        assert_eq!(request.uid, "u1");
        assert_eq!(request.kind.kind, "Pod");
        assert!(matches!(parse(b"{"), Err(ReviewError::Malformed(_))));
        assert!(matches!(parse(b"[]"), Err(ReviewError::Malformed(_))));
        let v1beta1 = br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"u"}}"#;
        let err = parse(v1beta1).unwrap_err();
        assert!(err.to_string().contains("admissionReviewVersions"), "{err}");
        let empty = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#;
        assert!(matches!(parse(empty), Err(ReviewError::NoRequest)));
    }

    #[test]
    fn an_object_is_named_by_the_request_else_its_name_else_its_generate_name() {
        let review = |name: &str, metadata: &str| {
            format!(
                r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{{"uid":"u","name":"{name}","object":{{"metadata":{metadata}}}}}}}"#
            )
        };
        for (name, metadata, want) in [
            ("req", r#"{"name":"meta","generateName":"gen-"}"#, "req"),
            ("", r#"{"name":"meta","generateName":"gen-"}"#, "meta"),
            ("", r#"{"name":"","generateName":"gen-"}"#, "gen-"),
            ("", "{}", ""),
        ] {
            let request = parse(review(name, metadata).as_bytes()).unwrap();
            assert_eq!(request.object_name(), want, "{name:?} {metadata}");
            let meta: serde_json::Value = serde_json::from_str(metadata).unwrap();
            let from =
                request.object_name_from(meta["name"].as_str(), meta["generateName"].as_str());
            assert_eq!(
                from, want,
                "from metadata read elsewhere: {name:?} {metadata}"
            );
        }
    }

    #[test]
    fn responses_have_the_wire_shape() {
        let patch: json_patch::Patch = serde_json::from_value(serde_json::json!([
            {"op": "add", "path": "/metadata/annotations", "value": {"a": "b"}}
        ]))
        .unwrap();
        let json = serde_json::to_vec(&patch).unwrap();
        let review = AdmissionResponse::patched("u1", json.clone()).into_review();
        assert_eq!(review["response"]["uid"], "u1");
        assert_eq!(review["response"]["allowed"], true);
        assert_eq!(review["response"]["patchType"], "JSONPatch");
        let written: serde_json::Value = serde_json::from_slice(
            &AdmissionResponse::patched("u1", json)
                .to_review_json()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(written, review, "the body sent is the review envelope");
        assert_eq!(
            review["response"]["patch"],
            base64_encode(&serde_json::to_vec(&patch).unwrap())
        );
        let allowed = AdmissionResponse::allow("u3");
        let written: serde_json::Value =
            serde_json::from_slice(&allowed.to_review_json().unwrap()).unwrap();
        assert_eq!(written, allowed.into_review());
        assert!(written["response"].get("patch").is_none());
        assert!(written["response"].get("patchType").is_none());
        assert_eq!(
            AdmissionResponse::patched("u4", Vec::new()),
            AdmissionResponse::allow("u4"),
            "no bytes, no patch"
        );
        let denied = AdmissionResponse::deny("u2", "no").into_review();
        assert_eq!(denied["response"]["status"]["code"], 403);
        assert_eq!(denied["response"]["status"]["message"], "no");
        assert!(denied["response"].get("patch").is_none());
    }
}
