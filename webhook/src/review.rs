//! The `admission.k8s.io/v1` `AdmissionReview` wire format, reduced to what a mutating Pod
//! webhook reads and writes. Own types rather than kube's so that the JSON Patch type is the
//! one the planner builds (json-patch 5) and so that hostile input is rejected with our own
//! messages.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
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
pub struct AdmissionReview<R = AdmissionRequest> {
    /// Must be [`ADMISSION_API_VERSION`].
    pub api_version: String,
    /// Must be [`ADMISSION_KIND`].
    pub kind: String,
    /// The request (absent only in malformed reviews).
    pub request: Option<R>,
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

impl GroupVersionKind {
    /// Whether this is the core group's v1 Pod.
    pub fn is_pod(&self) -> bool {
        self.group.is_empty() && self.version == "v1" && self.kind == "Pod"
    }
}

/// An object under review.
#[derive(Clone, Debug)]
pub enum Object {
    /// The Pod of a Pod CREATE, read as the review was parsed: the one object the decider
    /// reads whole, so it is read once rather than scanned as raw JSON and read again.
    Pod(Box<Pod>),
    /// Any other object, unread.
    Raw(Box<serde_json::value::RawValue>),
}

impl Object {
    /// The object read as `T`.
    ///
    /// # Errors
    /// When it is not a `T`.
    pub fn read<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        match self {
            Object::Raw(raw) => serde_json::from_str(raw.get()),
            // Not taken by the webhook's own readers (a Pod is read eagerly only for CREATE,
            // which reads it as a Pod), but correct for any `T`.
            Object::Pod(pod) => serde_json::to_value(pod).and_then(serde_json::from_value),
        }
    }
}

/// One admission request.
///
/// Read with `kind` and `operation` before `object`, as the apiserver writes them: the object
/// of a Pod CREATE is then read as a Pod on the way ([`Object::Pod`]); anything else, or an
/// object that is not a readable Pod, is kept raw ([`parse`] reads such a review again).
#[derive(Clone, Debug)]
pub struct AdmissionRequest {
    /// Identifies the request; copied into the response.
    pub uid: String,
    /// The object's kind.
    pub kind: GroupVersionKind,
    /// `CREATE`, `UPDATE`, `DELETE` or `CONNECT`.
    pub operation: String,
    /// The object's namespace.
    pub namespace: Option<String>,
    /// The object's name (often empty on CREATE with `generateName`).
    pub name: Option<String>,
    /// The object as it will be stored (before this webhook's patch).
    pub object: Option<Object>,
    /// The object as stored before an UPDATE (always [`Object::Raw`]).
    pub old_object: Option<Object>,
    /// The subresource (`ephemeralcontainers`), empty for the object itself.
    pub sub_resource: Option<String>,
    /// True for `--dry-run=server` requests: no side effects allowed (this webhook has none).
    pub dry_run: Option<bool>,
}

/// The fields of [`AdmissionRequest`] on the wire.
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "camelCase")]
enum Field {
    Uid,
    Kind,
    Operation,
    Namespace,
    Name,
    Object,
    OldObject,
    SubResource,
    DryRun,
    #[serde(other)]
    Other,
}

/// Reads an [`AdmissionRequest`]; `eager`: a Pod CREATE's object is read as a Pod.
struct RequestVisitor {
    eager: bool,
}

/// `value` put in `slot`, refusing a second one as serde's derived readers do.
fn once<T, E: serde::de::Error>(
    slot: &mut Option<T>,
    value: T,
    field: &'static str,
) -> Result<(), E> {
    if slot.is_some() {
        return Err(E::duplicate_field(field));
    }
    *slot = Some(value);
    Ok(())
}

impl<'de> serde::de::Visitor<'de> for RequestVisitor {
    type Value = AdmissionRequest;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an admission request")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut map: A,
    ) -> Result<AdmissionRequest, A::Error> {
        let mut uid = None;
        let mut kind: Option<GroupVersionKind> = None;
        let mut operation: Option<String> = None;
        let (mut namespace, mut name, mut sub_resource) = (None, None, None);
        let (mut object, mut old_object, mut dry_run) = (None, None, None);
        while let Some(field) = map.next_key::<Field>()? {
            match field {
                Field::Uid => once(&mut uid, map.next_value::<String>()?, "uid")?,
                Field::Kind => once(&mut kind, map.next_value()?, "kind")?,
                Field::Operation => once(&mut operation, map.next_value()?, "operation")?,
                Field::Namespace => once(&mut namespace, map.next_value()?, "namespace")?,
                Field::Name => once(&mut name, map.next_value()?, "name")?,
                Field::Object => {
                    let pod_create = kind.as_ref().is_some_and(GroupVersionKind::is_pod)
                        && operation.as_deref() == Some("CREATE");
                    let value = if self.eager && pod_create {
                        map.next_value::<Option<Box<Pod>>>()?.map(Object::Pod)
                    } else {
                        map.next_value::<Option<Box<serde_json::value::RawValue>>>()?
                            .map(Object::Raw)
                    };
                    once(&mut object, value, "object")?;
                }
                Field::OldObject => {
                    let value = map.next_value::<Option<Box<serde_json::value::RawValue>>>()?;
                    once(&mut old_object, value.map(Object::Raw), "oldObject")?;
                }
                Field::SubResource => {
                    once(&mut sub_resource, map.next_value()?, "subResource")?;
                }
                Field::DryRun => once(&mut dry_run, map.next_value()?, "dryRun")?,
                Field::Other => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(AdmissionRequest {
            uid: uid.ok_or_else(|| serde::de::Error::missing_field("uid"))?,
            kind: kind.unwrap_or_default(),
            operation: operation.unwrap_or_default(),
            namespace: namespace.flatten(),
            name: name.flatten(),
            object: object.flatten(),
            old_object: old_object.flatten(),
            sub_resource: sub_resource.flatten(),
            dry_run: dry_run.flatten(),
        })
    }
}

impl<'de> Deserialize<'de> for AdmissionRequest {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(RequestVisitor { eager: true })
    }
}

/// An [`AdmissionRequest`] read with every object kept raw.
struct RawRequest(AdmissionRequest);

impl<'de> Deserialize<'de> for RawRequest {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_map(RequestVisitor { eager: false })
            .map(RawRequest)
    }
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
        struct WithMeta {
            #[serde(default)]
            metadata: Option<Meta>,
        }
        if let Some(name) = self.name.as_deref().filter(|n| !n.is_empty()) {
            return name.to_owned();
        }
        if let Some(Object::Pod(pod)) = &self.object {
            let meta = &pod.metadata;
            return self.object_name_from(meta.name.as_deref(), meta.generate_name.as_deref());
        }
        let meta = self
            .object
            .as_ref()
            .and_then(|object| object.read::<WithMeta>().ok())
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
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Envelope<'a> {
            api_version: &'static str,
            kind: &'static str,
            response: &'a AdmissionResponse,
        }
        let patch = self.patch.as_deref().unwrap_or_default();
        let encoded = patch.len().div_ceil(3) * 4;
        let mut body = Vec::with_capacity(1024 + encoded);
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
            // The envelope may have outgrown the first guess (warnings, annotations): one
            // reservation rather than growing while encoding.
            body.reserve(encoded + 64);
            body.extend_from_slice(br#","patch":""#);
            // SIMD base64: the `base64` crate's encoder took a tenth of a review's instructions
            // for a jailed pod's ~7 KiB patch.
            base64_simd::STANDARD.encode_append(patch, &mut body);
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
    // UTF-8 is checked once for the whole body, a word at a time, so that serde_json reads it as
    // text and does not check every string again (a sixth of reading a Pod). A body that is not
    // UTF-8 throughout is read as bytes, as before: serde_json then names the first bad string
    // it reads and skips the ones it ignores.
    parse_read(body, std::str::from_utf8(body).ok())
}

/// [`parse`], reading `body` as `text` when that is given.
fn parse_read(body: &[u8], text: Option<&str>) -> Result<AdmissionRequest, ReviewError> {
    // Read again with the object raw when that fails: a Pod CREATE whose object is not a
    // readable Pod is still a review, which the decider answers with what is wrong with it.
    let review = if let Ok(review) = read::<AdmissionReview>(body, text) {
        review
    } else {
        let review =
            read::<AdmissionReview<RawRequest>>(body, text).map_err(ReviewError::Malformed)?;
        AdmissionReview {
            api_version: review.api_version,
            kind: review.kind,
            request: review.request.map(|r| r.0),
        }
    };
    if review.api_version != ADMISSION_API_VERSION || review.kind != ADMISSION_KIND {
        return Err(ReviewError::WrongType {
            api_version: review.api_version,
            kind: review.kind,
        });
    }
    review.request.ok_or(ReviewError::NoRequest)
}

/// `body` read as `T`: as text when it is UTF-8 throughout (`text`), else as bytes.
fn read<T: serde::de::DeserializeOwned>(body: &[u8], text: Option<&str>) -> serde_json::Result<T> {
    match text {
        Some(text) => serde_json::from_str(text),
        None => serde_json::from_slice(body),
    }
}

/// Standard base64 with padding (the encoding of `[]byte` fields in Kubernetes JSON).
pub fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use proptest::sample::Index;

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

    /// A review whose request has `fields` in the order given (`json!` sorts keys, the
    /// apiserver does not).
    fn ordered_review(fields: &[(&str, &str)]) -> Vec<u8> {
        let request = fields
            .iter()
            .map(|(key, value)| format!("\"{key}\":{value}"))
            .collect::<Vec<_>>()
            .join(",");
        format!(
            r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{{{request}}}}}"#
        )
        .into_bytes()
    }

    const POD_KIND: &str = r#"{"group":"","version":"v1","kind":"Pod"}"#;

    /// `fields`' review with the bytes of `NOT_UTF8` where `MARK` is.
    fn with_bad_bytes(fields: &[(&str, &str)]) -> Vec<u8> {
        let text = ordered_review(fields);
        let at = text.windows(4).position(|w| w == b"MARK").expect("MARK");
        [&text[..at], NOT_UTF8, &text[at + 4..]].concat()
    }

    const NOT_UTF8: &[u8] = b"\xffok\xc3";

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        /// Reading the body as text changes nothing: any body, UTF-8 or not, whole or cut,
        /// gives the request or the error that reading it as bytes gives.
        #[test]
        fn any_body_reads_as_it_does_as_bytes(
            changes in proptest::collection::vec(
                (proptest::prelude::any::<Index>(), proptest::sample::select(CHANGED_BYTES)),
                0..4,
            ),
            cut in proptest::option::of(proptest::prelude::any::<Index>()),
        ) {
            let mut body = ordered_review(&[
                ("uid", r#""u-é""#),
                ("kind", POD_KIND),
                ("operation", r#""CREATE""#),
                ("namespace", r#""ns""#),
                ("userInfo", r#"{"username":"日本\u00e9\ud83d\ude00"}"#),
                ("object", r#"{"metadata":{"name":"p","labels":{"a":"b"},"annotations":{"n":"ß\"q\\"}},"spec":{"containers":[{"name":"c","image":"i","env":[{"name":"E","value":"v\u0001"}]}]}}"#),
                ("dryRun", "false"),
            ]);
            for (at, byte) in changes {
                let at = at.index(body.len());
                body[at] = byte;
            }
            if let Some(cut) = cut {
                body.truncate(cut.index(body.len()));
            }
            let as_text = format!("{:?}", parse(&body).map_err(|e| e.to_string()));
            let as_bytes = format!("{:?}", parse_read(&body, None).map_err(|e| e.to_string()));
            proptest::prop_assert_eq!(as_text, as_bytes);
        }
    }

    /// Bytes that change how a body reads: JSON's own, and ones that are not UTF-8 alone.
    const CHANGED_BYTES: &[u8] = &[
        b'"', b'\\', b'{', b'}', b'[', b',', b':', b'a', b'0', b' ', 0, 0x1f, 0x7f, 0x80, 0xbf,
        0xc3, 0xe6, 0xf0, 0xff,
    ];

    #[test]
    fn a_body_that_is_not_utf8_throughout_is_read_as_bytes_as_before() {
        // In a string the review skips, bad bytes are no reason to refuse it: serde_json does
        // not check what it skips. In one it reads, serde's own error names the place.
        let skipped = with_bad_bytes(&[
            ("uid", r#""u""#),
            ("kind", POD_KIND),
            ("operation", r#""CREATE""#),
            ("somethingNew", r#"{"note":"MARK"}"#),
            ("object", POD),
        ]);
        assert!(std::str::from_utf8(&skipped).is_err());
        let request = parse(&skipped).unwrap();
        assert_eq!(request.uid, "u");
        assert!(
            matches!(request.object, Some(Object::Pod(_))),
            "{request:?}"
        );
        let read = with_bad_bytes(&[("uid", r#""MARK""#), ("kind", POD_KIND)]);
        let err = parse(&read).unwrap_err();
        assert!(matches!(err, ReviewError::Malformed(_)), "{err}");
        assert!(
            err.to_string()
                .contains("invalid unicode code point at line 1 column"),
            "{err}"
        );
    }

    const POD: &str = r#"{"metadata":{"generateName":"agent-","labels":{"a":"b"}},"spec":{"containers":[{"name":"c","image":"i"}]}}"#;

    #[test]
    fn a_pod_create_in_the_apiservers_order_is_read_once_and_any_other_order_the_same() {
        let apiserver = ordered_review(&[
            ("uid", r#""u""#),
            ("kind", POD_KIND),
            ("namespace", r#""ns""#),
            ("operation", r#""CREATE""#),
            ("userInfo", r#"{"username":"x","uid":"y"}"#),
            ("object", POD),
            ("oldObject", "null"),
            ("dryRun", "false"),
        ]);
        let sorted = ordered_review(&[
            ("kind", POD_KIND),
            ("namespace", r#""ns""#),
            ("object", POD),
            ("operation", r#""CREATE""#),
            ("uid", r#""u""#),
        ]);
        let eager = parse(&apiserver).unwrap();
        let lazy = parse(&sorted).unwrap();
        assert!(matches!(eager.object, Some(Object::Pod(_))), "{eager:?}");
        assert!(matches!(lazy.object, Some(Object::Raw(_))), "{lazy:?}");
        assert!(eager.old_object.is_none() && eager.dry_run == Some(false));
        for request in [&eager, &lazy] {
            let pod: Pod = request.object.as_ref().unwrap().read().unwrap();
            assert_eq!(pod, serde_json::from_str::<Pod>(POD).unwrap());
            assert_eq!(request.object_name(), "agent-");
            assert_eq!(
                (request.uid.as_str(), request.operation.as_str()),
                ("u", "CREATE")
            );
            assert_eq!(request.namespace.as_deref(), Some("ns"));
        }
        // Only a Pod CREATE's object is read on the way.
        for (kind, operation) in [
            (POD_KIND, r#""UPDATE""#),
            (
                r#"{"group":"","version":"v1","kind":"Service"}"#,
                r#""CREATE""#,
            ),
            (
                r#"{"group":"x.io","version":"v1","kind":"Pod"}"#,
                r#""CREATE""#,
            ),
        ] {
            let request = parse(&ordered_review(&[
                ("uid", r#""u""#),
                ("kind", kind),
                ("operation", operation),
                ("object", POD),
                ("oldObject", POD),
            ]))
            .unwrap();
            assert!(
                matches!(request.object, Some(Object::Raw(_))),
                "{kind} {operation}"
            );
            assert!(matches!(request.old_object, Some(Object::Raw(_))));
        }
    }

    #[test]
    fn a_pod_create_whose_object_is_no_pod_is_still_a_review_with_the_object_raw() {
        for object in [r#"{"spec":{"containers":"none"}}"#, r#""a string""#, "[1]"] {
            let request = parse(&ordered_review(&[
                ("uid", r#""u""#),
                ("kind", POD_KIND),
                ("operation", r#""CREATE""#),
                ("object", object),
            ]))
            .unwrap();
            let Some(Object::Raw(raw)) = &request.object else {
                panic!("{object}: {request:?}");
            };
            assert_eq!(raw.get(), object);
            assert!(request.object.as_ref().unwrap().read::<Pod>().is_err());
        }
        let null = parse(&ordered_review(&[
            ("uid", r#""u""#),
            ("kind", POD_KIND),
            ("operation", r#""CREATE""#),
            ("object", "null"),
        ]))
        .unwrap();
        assert!(null.object.is_none());
        // What is not JSON, or not a request, is still refused, with serde's own words.
        for (fields, want) in [
            (
                &[("uid", r#""u""#), ("uid", r#""v""#)][..],
                "duplicate field `uid`",
            ),
            (&[("kind", POD_KIND)][..], "missing field `uid`"),
            (&[("uid", "7")][..], "invalid type: integer `7`"),
            (
                &[
                    ("uid", r#""u""#),
                    ("kind", POD_KIND),
                    ("operation", r#""CREATE""#),
                    ("object", "{"),
                ][..],
                "EOF",
            ),
        ] {
            let err = parse(&ordered_review(fields)).unwrap_err();
            assert!(matches!(err, ReviewError::Malformed(_)), "{err}");
            assert!(err.to_string().contains(want), "{fields:?}: {err}");
        }
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
    fn the_patch_sent_is_standard_base64_of_every_length() {
        // Every remainder of three and every SIMD block boundary up to 200 bytes, then a
        // jailed pod's size; the `base64` crate (`into_review`) is the oracle.
        let bytes: Vec<u8> = (0..12_000u32)
            .map(|i| u8::try_from(i * 7919 % 251).unwrap())
            .collect();
        for len in (1..=200).chain([4095, 4096, 4097, 9_999, 12_000]) {
            let response = AdmissionResponse::patched("u", bytes[..len].to_vec());
            let written: serde_json::Value =
                serde_json::from_slice(&response.to_review_json().unwrap()).unwrap();
            assert_eq!(
                written["response"]["patch"],
                base64_encode(&bytes[..len]),
                "{len} bytes"
            );
            assert_eq!(written, response.into_review(), "{len} bytes");
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
