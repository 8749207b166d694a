//! AWS `SigV4` re-signing: a request the agent's SDK signed with placeholder keys is signed again
//! with the real keys, for the same region, service and host, at the current time, keeping the
//! headers the client signed (the signature, `x-amz-date` and the session token are replaced).
//!
//! The payload is handled as the client's `x-amz-content-sha256` says: a hex hash, `UNSIGNED-
//! PAYLOAD` and `STREAMING-UNSIGNED-PAYLOAD-TRAILER` are signed as they are and the body passes
//! untouched; `STREAMING-AWS4-HMAC-SHA256-PAYLOAD[-TRAILER]` (S3's aws-chunked uploads) chain a
//! signature through every chunk and the trailer, so the body is re-framed chunk by chunk with
//! new signatures (same length: signatures are 64 hex digits); without the header the body is
//! buffered (up to [`BUFFER_LIMIT`]) and hashed. All signing is `aws-sigv4`'s: the request with
//! `http_request::sign`, chunks and trailers with `sign::v4::{sign_chunk, sign_trailer}`.
//!
//! Nothing here logs or formats a key: errors name headers and limits, never values.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_credential_types::provider::{ProvideCredentials as _, SharedCredentialsProvider};
use aws_sigv4::http_request::{
    PercentEncodingMode, SessionTokenMode, SignableBody, SignableRequest, SigningSettings,
    UriPathNormalizationMode,
};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use boundary_api::credentials::AwsKeys;
use bytes::{Buf as _, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt as _;

use crate::upstream::BoxError;

/// The largest body buffered to hash it (a request without `x-amz-content-sha256`, e.g. Bedrock's
/// `InvokeModel`), and the largest single aws-chunked chunk.
pub const BUFFER_LIMIT: usize = 32 << 20;
/// The longest chunk header or trailer line of an aws-chunked body.
const LINE_LIMIT: usize = 4 << 10;
/// The most bytes of trailing headers of an aws-chunked body.
const TRAILER_LIMIT: usize = 16 << 10;
/// Temporary credentials of the default chain are renewed this long before they expire.
const RENEW_BEFORE: Duration = Duration::from_mins(5);
/// A failed renewal is tried again after this pause.
const RENEWAL_RETRY: Duration = Duration::from_secs(10);

const ALGORITHM: &str = "AWS4-HMAC-SHA256";
const CONTENT_SHA256: &str = "x-amz-content-sha256";
const DATE: &str = "x-amz-date";
const SECURITY_TOKEN: &str = "x-amz-security-token";
const TRAILER_SIGNATURE: &str = "x-amz-trailer-signature";
const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";
const STREAMING_UNSIGNED_TRAILER: &str = "STREAMING-UNSIGNED-PAYLOAD-TRAILER";
const STREAMING_SIGNED: &str = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD";
const STREAMING_SIGNED_TRAILER: &str = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER";

/// Why a request cannot be re-signed. The caller answers 403 (not signed, bad header), 413
/// (too large) or 502 (no credentials).
#[derive(Debug, thiserror::Error)]
pub enum SigV4Error {
    /// No `Authorization: AWS4-HMAC-SHA256 ...` header.
    #[error(
        "the request has no AWS SigV4 Authorization header{}",
        if *.presigned { " (a presigned URL: its signature is in the query string, which cannot be re-signed; sign requests with the Authorization header)" } else { "" }
    )]
    NotSigned {
        /// The query string carries `X-Amz-Signature` or `X-Amz-Credential`.
        presigned: bool,
    },
    /// The Authorization header is not a well-formed `AWS4-HMAC-SHA256` one.
    #[error("malformed AWS SigV4 Authorization header: {0}")]
    Authorization(&'static str),
    /// A header the client signed is not in the request.
    #[error("the signed header {0} is missing from the request")]
    MissingSignedHeader(String),
    /// A signed header's value is not visible ASCII.
    #[error("the signed header {0} has a value that is not visible ASCII")]
    HeaderValue(String),
    /// An `x-amz-content-sha256` value this signer does not know (e.g. `SigV4a` streaming).
    #[error(
        "unsupported x-amz-content-sha256 (expected a SHA-256 hex digest, {UNSIGNED_PAYLOAD}, {STREAMING_UNSIGNED_TRAILER}, {STREAMING_SIGNED} or {STREAMING_SIGNED_TRAILER})"
    )]
    ContentSha256,
    /// A body to hash is larger than [`BUFFER_LIMIT`].
    #[error(
        "the request body exceeds {limit} bytes, the most buffered to hash it for signing; send x-amz-content-sha256 (the body's SHA-256 or UNSIGNED-PAYLOAD)"
    )]
    BodyTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// Reading the body to hash it failed.
    #[error("reading the request body: {0}")]
    Body(BoxError),
    /// The default chain has no credentials.
    #[error(
        "no AWS credentials: {0} (the sidecar's default chain: AWS_ACCESS_KEY_ID, profile, IRSA web identity, ECS/EKS Pod Identity endpoint, instance metadata)"
    )]
    Credentials(String),
    /// `aws-sigv4` refused to sign.
    #[error("signing failed: {0}")]
    Signing(String),
}

/// The real keys: fixed ones (a Secret's), or the sidecar's own identity (the default credential
/// chain: environment, profile, IRSA web identity, ECS/EKS Pod Identity container endpoint,
/// instance profile), cached until shortly before they expire.
#[derive(Clone)]
pub struct AwsSigner {
    source: Source,
}

#[derive(Clone)]
enum Source {
    Static(Credentials),
    Chain(Arc<Chain>),
}

struct Chain {
    provider: SharedCredentialsProvider,
    cached: tokio::sync::Mutex<Option<Cached>>,
}

/// The chain's current credentials, and when a failed renewal may be tried again.
struct Cached {
    credentials: Credentials,
    retry_renewal_at: Option<SystemTime>,
}

impl fmt::Debug for AwsSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let source = match self.source {
            Source::Static(_) => "static keys",
            Source::Chain(_) => "default credential chain",
        };
        f.debug_struct("AwsSigner")
            .field("source", &source)
            .finish()
    }
}

impl AwsSigner {
    /// Signs with `keys`.
    pub fn from_keys(keys: AwsKeys) -> AwsSigner {
        AwsSigner {
            source: Source::Static(Credentials::new(
                keys.access_key_id,
                keys.secret_access_key,
                keys.session_token,
                None,
                "boundary-credentials",
            )),
        }
    }

    /// Signs with the process's own AWS identity (the default credential chain). Credentials
    /// are fetched on first use; [`AwsSigner::check`] fetches them now.
    pub async fn from_default_chain() -> AwsSigner {
        let config = aws_config::provider_config::ProviderConfig::default()
            .with_http_client(boundary_aws_http::https_client());
        let chain = aws_config::default_provider::credentials::DefaultCredentialsChain::builder()
            .configure(config)
            .build()
            .await;
        AwsSigner {
            source: Source::Chain(Arc::new(Chain {
                provider: SharedCredentialsProvider::new(chain),
                cached: tokio::sync::Mutex::new(None),
            })),
        }
    }

    /// Whether credentials can be had now (for start-up diagnostics).
    pub async fn check(&self) -> Result<(), SigV4Error> {
        self.credentials().await.map(drop)
    }

    async fn credentials(&self) -> Result<Credentials, SigV4Error> {
        let chain = match &self.source {
            Source::Static(c) => return Ok(c.clone()),
            Source::Chain(chain) => chain,
        };
        let mut cached = chain.cached.lock().await;
        let now = SystemTime::now();
        if let Some(c) = cached.as_ref() {
            let expiry = c.credentials.expiry();
            let fresh = expiry.is_none_or(|at| at > now + RENEW_BEFORE);
            let waiting =
                c.retry_renewal_at.is_some_and(|at| at > now) && expiry.is_some_and(|at| at > now);
            if fresh || waiting {
                return Ok(c.credentials.clone());
            }
        }
        match chain.provider.provide_credentials().await {
            Ok(fetched) => {
                *cached = Some(Cached {
                    credentials: fetched.clone(),
                    retry_renewal_at: None,
                });
                Ok(fetched)
            }
            Err(e) => {
                let reason = error_chain(&e);
                // A failed renewal keeps the current credentials while they are valid, and is
                // retried after a pause (requests wait for the renewal).
                match cached.as_mut() {
                    Some(c) if c.credentials.expiry().is_some_and(|at| at > now) => {
                        tracing::warn!(error = %reason, "renewing the sidecar's AWS credentials failed; using the current ones until they expire");
                        c.retry_renewal_at = Some(now + RENEWAL_RETRY);
                        Ok(c.credentials.clone())
                    }
                    _ => Err(SigV4Error::Credentials(reason)),
                }
            }
        }
    }

    /// Re-signs the request in `parts` (signed by the client with placeholder keys) with the real
    /// keys, in place, and returns its body to send: `body` itself, the buffered body that was
    /// hashed, or an aws-chunked body whose chunk signatures are re-computed as it streams.
    ///
    /// The request must be sent with the same method, path, query, host and signed headers as it
    /// has now (the proxy may change unsigned hop-by-hop headers).
    pub async fn resign<B>(
        &self,
        parts: &mut http::request::Parts,
        body: B,
    ) -> Result<ResignedBody<B>, SigV4Error>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: Into<BoxError>,
    {
        let auth = authorization_of(parts)?;
        let payload = Payload::of(&parts.headers)?;
        let credentials = self.credentials().await?;

        let body = match payload {
            Payload::Compute => {
                let (data, trailers) = buffer(&parts.headers, body).await?;
                Pending::Buffered(data, trailers)
            }
            Payload::Chunked { .. } => Pending::Chunked(body),
            _ => Pending::As(body),
        };
        let signable_body = match &body {
            Pending::Buffered(data, _) => SignableBody::Bytes(data),
            Pending::As(_) | Pending::Chunked(_) => payload
                .declared()
                .ok_or_else(|| SigV4Error::Signing("the body to hash was not read".into()))?,
        };

        let identity = Identity::from(credentials);
        let time = SystemTime::now();
        let scope = Scope {
            identity: &identity,
            region: &auth.region,
            service: &auth.service,
            time,
        };
        let (headers, seed) = sign_head(parts, &auth, signable_body, &scope)?;
        for name in [header::AUTHORIZATION.as_str(), DATE, SECURITY_TOKEN] {
            parts.headers.remove(name);
        }
        for (name, value, sensitive) in headers {
            let mut value = HeaderValue::from_str(&value)
                .map_err(|_| SigV4Error::Signing(format!("the signer's {name} is not a header")))?;
            value.set_sensitive(sensitive);
            parts.headers.insert(name, value);
        }

        Ok(ResignedBody {
            inner: match body {
                Pending::As(body) => Inner::As(body),
                Pending::Buffered(data, trailers) => Inner::Buffered {
                    data: Some(data),
                    trailers,
                },
                Pending::Chunked(body) => Inner::Chunked(Box::new(ChunkResigner::new(
                    body,
                    ChunkSigner {
                        identity,
                        region: auth.region,
                        service: auth.service,
                        time,
                        previous: seed,
                    },
                    matches!(payload, Payload::Chunked { trailer: true }),
                ))),
            },
        })
    }
}

/// A body between signing steps.
enum Pending<B> {
    As(B),
    Buffered(Bytes, Option<HeaderMap>),
    Chunked(B),
}

/// What signs: the identity, region, service and time of one request.
struct Scope<'a> {
    identity: &'a Identity,
    region: &'a str,
    service: &'a str,
    time: SystemTime,
}

impl Scope<'_> {
    fn params<S: Default>(&self, settings: S) -> Result<v4::SigningParams<'_, S>, SigV4Error> {
        v4::SigningParams::builder()
            .identity(self.identity)
            .region(self.region)
            .name(self.service)
            .time(self.time)
            .settings(settings)
            .build()
            .map_err(|e| SigV4Error::Signing(e.to_string()))
    }
}

/// Headers the signer sets: name, value, whether sensitive.
type SigningHeaders = Vec<(&'static str, String, bool)>;

/// Signs the request head; returns the headers to set (name, value, sensitive) and the seed
/// signature.
fn sign_head(
    parts: &http::request::Parts,
    auth: &SigV4Authorization,
    body: SignableBody<'_>,
    scope: &Scope<'_>,
) -> Result<(SigningHeaders, String), SigV4Error> {
    // Exactly the headers the client signed (less those the signer sets): anything else may be
    // changed on the way without breaking the signature.
    let mut signed: Vec<(&str, &str)> = Vec::new();
    for name in &auth.signed_headers {
        if matches!(name.as_str(), DATE | SECURITY_TOKEN | "authorization") {
            continue;
        }
        let mut values = parts.headers.get_all(name.as_str()).iter().peekable();
        if values.peek().is_none() {
            // HTTP/2 clients send the host as :authority.
            match (name.as_str(), parts.uri.authority()) {
                ("host", Some(authority)) => signed.push(("host", authority.as_str())),
                _ => return Err(SigV4Error::MissingSignedHeader(name.clone())),
            }
            continue;
        }
        for value in values {
            let value = value
                .to_str()
                .map_err(|_| SigV4Error::HeaderValue(name.clone()))?;
            signed.push((name.as_str(), value));
        }
    }
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str);
    let request = SignableRequest::new(parts.method.as_str(), path, signed.into_iter(), body)
        .map_err(|e| SigV4Error::Signing(e.to_string()))?;

    let mut settings = SigningSettings::default();
    settings.excluded_headers = Some(Vec::new());
    settings.session_token_mode = SessionTokenMode::Include;
    if is_s3(scope.service) {
        // S3 signs the path as sent: no normalisation, no second encoding.
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
    }
    let params = scope.params(settings)?.into();
    let (instructions, seed) = aws_sigv4::http_request::sign(request, &params)
        .map_err(|e| SigV4Error::Signing(e.to_string()))?
        .into_parts();
    let (headers, _) = instructions.into_parts();
    let headers = headers
        .into_iter()
        .map(|h| (h.name(), h.value().to_owned(), h.sensitive()))
        .collect();
    Ok((headers, seed))
}

/// Services that sign S3's way (the path as is).
fn is_s3(service: &str) -> bool {
    matches!(
        service,
        "s3" | "s3-object-lambda" | "s3-outposts" | "s3express"
    )
}

/// The request's `SigV4` Authorization (its access key id says which placeholder signed), or
/// why there is none.
pub fn authorization_of(parts: &http::request::Parts) -> Result<SigV4Authorization, SigV4Error> {
    let mut values = parts.headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        let query = parts.uri.query().unwrap_or_default().to_ascii_lowercase();
        return Err(SigV4Error::NotSigned {
            presigned: query.contains("x-amz-signature=") || query.contains("x-amz-credential="),
        });
    };
    if values.next().is_some() {
        return Err(SigV4Error::Authorization(
            "more than one Authorization header",
        ));
    }
    let value = value
        .to_str()
        .map_err(|_| SigV4Error::Authorization("not visible ASCII"))?;
    SigV4Authorization::parse(value)
}

/// How the payload is signed.
enum Payload {
    /// `x-amz-content-sha256` is the body's hash.
    Hash(String),
    /// `UNSIGNED-PAYLOAD`.
    Unsigned,
    /// `STREAMING-UNSIGNED-PAYLOAD-TRAILER`.
    UnsignedTrailer,
    /// aws-chunked with chunk signatures (and a signed trailer).
    Chunked { trailer: bool },
    /// No header: the body's hash is part of the signature.
    Compute,
}

impl Payload {
    /// The canonical request's payload hash when the body is not hashed here.
    fn declared(&self) -> Option<SignableBody<'static>> {
        Some(match self {
            Payload::Hash(hash) => SignableBody::Precomputed(hash.clone()),
            Payload::Unsigned => SignableBody::UnsignedPayload,
            Payload::UnsignedTrailer => SignableBody::StreamingUnsignedPayloadTrailer,
            // aws-sigv4 has no variant for it: the literal is the payload hash.
            Payload::Chunked { trailer: false } => {
                SignableBody::Precomputed(STREAMING_SIGNED.to_owned())
            }
            Payload::Chunked { trailer: true } => SignableBody::StreamingSignedPayloadTrailer,
            Payload::Compute => return None,
        })
    }

    fn of(headers: &HeaderMap) -> Result<Payload, SigV4Error> {
        let mut values = headers.get_all(CONTENT_SHA256).iter();
        let Some(value) = values.next() else {
            return Ok(Payload::Compute);
        };
        if values.next().is_some() {
            return Err(SigV4Error::ContentSha256);
        }
        let value = value.to_str().map_err(|_| SigV4Error::ContentSha256)?;
        Ok(match value {
            UNSIGNED_PAYLOAD => Payload::Unsigned,
            STREAMING_UNSIGNED_TRAILER => Payload::UnsignedTrailer,
            STREAMING_SIGNED => Payload::Chunked { trailer: false },
            STREAMING_SIGNED_TRAILER => Payload::Chunked { trailer: true },
            hex if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
                Payload::Hash(hex.to_owned())
            }
            _ => return Err(SigV4Error::ContentSha256),
        })
    }
}

/// The whole body (and its trailers), refused beyond [`BUFFER_LIMIT`].
async fn buffer<B>(
    headers: &HeaderMap,
    mut body: B,
) -> Result<(Bytes, Option<HeaderMap>), SigV4Error>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let too_large = SigV4Error::BodyTooLarge {
        limit: BUFFER_LIMIT,
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > BUFFER_LIMIT as u64)
        || body.size_hint().lower() > BUFFER_LIMIT as u64
    {
        return Err(too_large);
    }
    let mut data = BytesMut::new();
    let mut trailers: Option<HeaderMap> = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| SigV4Error::Body(e.into()))?;
        match frame.into_data() {
            Ok(chunk) => {
                if data.len() + chunk.len() > BUFFER_LIMIT {
                    return Err(too_large);
                }
                data.extend_from_slice(&chunk);
            }
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    trailers.get_or_insert_with(HeaderMap::new).extend(t);
                }
            }
        }
    }
    Ok((data.freeze(), trailers))
}

/// A parsed `Authorization: AWS4-HMAC-SHA256 Credential=<akid>/<date>/<region>/<service>/
/// aws4_request, SignedHeaders=<a;b;c>, Signature=<hex>` header. Debug leaves out the key id.
#[derive(Clone, PartialEq, Eq)]
pub struct SigV4Authorization {
    /// The access key id the client signed with.
    pub access_key_id: String,
    /// The scope's date, `YYYYMMDD`.
    pub date: String,
    /// The scope's region.
    pub region: String,
    /// The scope's service (signing name).
    pub service: String,
    /// The signed header names, lower case, in the client's order.
    pub signed_headers: Vec<String>,
    /// The client's signature (64 hex digits).
    pub signature: String,
}

impl fmt::Debug for SigV4Authorization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigV4Authorization")
            .field("access_key_id", &"<redacted>")
            .field("date", &self.date)
            .field("region", &self.region)
            .field("service", &self.service)
            .field("signed_headers", &self.signed_headers)
            .finish_non_exhaustive()
    }
}

impl SigV4Authorization {
    /// Parses an Authorization header value; anything but a complete `AWS4-HMAC-SHA256` one is an
    /// error saying what is wrong.
    pub fn parse(value: &str) -> Result<SigV4Authorization, SigV4Error> {
        use SigV4Error::Authorization as Bad;
        let value = value.trim();
        let (algorithm, rest) = value.split_once(' ').ok_or(Bad(
            "expected `AWS4-HMAC-SHA256 Credential=..., SignedHeaders=..., Signature=...`",
        ))?;
        if algorithm != ALGORITHM {
            return Err(if algorithm.starts_with("AWS4-") {
                Bad("only AWS4-HMAC-SHA256 can be re-signed (not SigV4a)")
            } else {
                Bad("not AWS4-HMAC-SHA256")
            });
        }
        let (mut credential, mut signed_headers, mut signature) = (None, None, None);
        for field in rest.split([',', ' ']).filter(|s| !s.is_empty()) {
            let (key, v) = field.split_once('=').ok_or(Bad("a field without `=`"))?;
            let slot = match key {
                "Credential" => &mut credential,
                "SignedHeaders" => &mut signed_headers,
                "Signature" => &mut signature,
                _ => {
                    return Err(Bad(
                        "unknown field (expected Credential, SignedHeaders, Signature)",
                    ));
                }
            };
            if slot.replace(v).is_some() {
                return Err(Bad("a field appears twice"));
            }
        }
        let credential = credential.ok_or(Bad("no Credential"))?;
        let signed_headers = signed_headers.ok_or(Bad("no SignedHeaders"))?;
        let signature = signature.ok_or(Bad("no Signature"))?;

        let scope: Vec<&str> = credential.split('/').collect();
        let [access_key_id, date, region, service, terminator] = scope[..] else {
            return Err(Bad(
                "Credential is not <key id>/<date>/<region>/<service>/aws4_request",
            ));
        };
        let name_like = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        };
        if access_key_id.is_empty() || !access_key_id.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Bad("Credential has an empty or invalid key id"));
        }
        if date.len() != 8 || !date.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Bad("Credential's date is not YYYYMMDD"));
        }
        if !name_like(region) || !name_like(service) {
            return Err(Bad("Credential's region or service is not [a-z0-9-]+"));
        }
        if terminator != "aws4_request" {
            return Err(Bad("Credential does not end in aws4_request"));
        }
        let signed_headers: Vec<String> = signed_headers.split(';').map(str::to_owned).collect();
        if signed_headers
            .iter()
            .any(|h| h.is_empty() || HeaderName::from_lowercase(h.as_bytes()).is_err())
        {
            return Err(Bad(
                "SignedHeaders is not a list of lower-case header names",
            ));
        }
        if !signed_headers.iter().any(|h| h == "host") {
            return Err(Bad("SignedHeaders does not include host"));
        }
        if signature.len() != 64 || !signature.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Bad("Signature is not 64 hex digits"));
        }
        Ok(SigV4Authorization {
            access_key_id: access_key_id.to_owned(),
            date: date.to_owned(),
            region: region.to_owned(),
            service: service.to_owned(),
            signed_headers,
            signature: signature.to_owned(),
        })
    }
}

/// The body of a re-signed request.
pub struct ResignedBody<B> {
    inner: Inner<B>,
}

enum Inner<B> {
    As(B),
    Buffered {
        data: Option<Bytes>,
        trailers: Option<HeaderMap>,
    },
    Chunked(Box<ChunkResigner<B>>),
}

impl<B> fmt::Debug for ResignedBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.inner {
            Inner::As(_) => "as sent",
            Inner::Buffered { .. } => "buffered",
            Inner::Chunked(_) => "aws-chunked, re-signed",
        };
        f.debug_tuple("ResignedBody").field(&kind).finish()
    }
}

impl<B> Body for ResignedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().inner {
            Inner::As(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|f| f.map(|f| f.map_err(Into::into))),
            Inner::Buffered { data, trailers } => Poll::Ready(
                data.take()
                    .filter(|d| !d.is_empty())
                    .map(Frame::data)
                    .or_else(|| trailers.take().map(Frame::trailers))
                    .map(Ok),
            ),
            Inner::Chunked(chunked) => chunked.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::As(body) => body.is_end_stream(),
            Inner::Buffered { data, trailers } => {
                data.as_ref().is_none_or(Bytes::is_empty) && trailers.is_none()
            }
            Inner::Chunked(chunked) => chunked.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::As(body) => body.size_hint(),
            Inner::Buffered { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            // Same length: only the 64-digit signatures change.
            Inner::Chunked(chunked) => chunked.inner.size_hint(),
        }
    }
}

/// Why an aws-chunked body cannot be re-signed (the upstream request fails with it).
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    /// Not `<hex size>;chunk-signature=<64 hex>\r\n<data>\r\n` framing.
    #[error("malformed aws-chunked body: {0}")]
    Malformed(&'static str),
    /// A chunk larger than [`BUFFER_LIMIT`].
    #[error("an aws-chunked chunk exceeds {BUFFER_LIMIT} bytes")]
    TooLarge,
    /// The body ended before its final chunk.
    #[error("the aws-chunked body ended before its final chunk")]
    Truncated,
    /// Signing failed.
    #[error("signing a chunk failed: {0}")]
    Signing(String),
}

/// Signs chunks and the trailer, chained from the seed signature.
struct ChunkSigner {
    identity: Identity,
    region: String,
    service: String,
    time: SystemTime,
    previous: String,
}

impl ChunkSigner {
    fn scope(&self) -> Scope<'_> {
        Scope {
            identity: &self.identity,
            region: &self.region,
            service: &self.service,
            time: self.time,
        }
    }

    fn chunk(&mut self, data: &Bytes) -> Result<String, ChunkError> {
        let scope = self.scope();
        let params = scope
            .params(())
            .map_err(|e| ChunkError::Signing(e.to_string()))?;
        let signature = v4::sign_chunk(data, &self.previous, &params)
            .map_err(|e| ChunkError::Signing(e.to_string()))?
            .into_parts()
            .1;
        self.previous.clone_from(&signature);
        Ok(signature)
    }

    fn trailer(&mut self, lines: &[(String, String)]) -> Result<String, ChunkError> {
        let mut headers = aws_smithy_runtime_api::http::Headers::new();
        for (name, value) in lines {
            headers
                .try_append(name.clone(), value.clone())
                .map_err(|_| ChunkError::Malformed("a trailing header is not a header"))?;
        }
        let scope = self.scope();
        let params = scope
            .params(())
            .map_err(|e| ChunkError::Signing(e.to_string()))?;
        let signature = v4::sign_trailer(&headers, &self.previous, &params)
            .map_err(|e| ChunkError::Signing(e.to_string()))?
            .into_parts()
            .1;
        self.previous.clone_from(&signature);
        Ok(signature)
    }
}

#[derive(Debug)]
enum ChunkState {
    /// Expecting `<hex size>;chunk-signature=<sig>\r\n`.
    Header,
    /// Expecting `size` bytes and `\r\n`; `size_text` is the client's hex, kept as it was.
    Data {
        size_text: String,
        size: usize,
    },
    /// After the final chunk: trailing header lines up to an empty line.
    Trailers {
        lines: Vec<(String, String)>,
        signed: bool,
        bytes: usize,
    },
    Done,
}

/// An aws-chunked body whose chunk (and trailer) signatures are replaced as it streams; each
/// chunk is buffered whole (its signature precedes its data).
struct ChunkResigner<B> {
    inner: B,
    input: BytesMut,
    output: VecDeque<Bytes>,
    http_trailers: Option<HeaderMap>,
    state: ChunkState,
    signer: ChunkSigner,
    trailer_expected: bool,
    inner_done: bool,
}

impl<B> ChunkResigner<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    fn new(inner: B, signer: ChunkSigner, trailer_expected: bool) -> Self {
        ChunkResigner {
            inner,
            input: BytesMut::new(),
            output: VecDeque::new(),
            http_trailers: None,
            state: ChunkState::Header,
            signer,
            trailer_expected,
            inner_done: false,
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, ChunkState::Done)
            && self.output.is_empty()
            && self.http_trailers.is_none()
            && (self.inner_done || self.inner.is_end_stream())
    }

    /// A line up to `\r\n` (without it), if complete.
    fn line(&mut self) -> Result<Option<String>, ChunkError> {
        let Some(end) = self.input.windows(2).position(|w| w == b"\r\n") else {
            return if self.input.len() > LINE_LIMIT {
                Err(ChunkError::Malformed(
                    "a chunk header or trailer line is too long",
                ))
            } else {
                Ok(None)
            };
        };
        if end > LINE_LIMIT {
            return Err(ChunkError::Malformed(
                "a chunk header or trailer line is too long",
            ));
        }
        let line = self.input.split_to(end);
        self.input.advance(2);
        String::from_utf8(line.to_vec())
            .map(Some)
            .map_err(|_| ChunkError::Malformed("a chunk header or trailer line is not text"))
    }

    /// Parses and re-signs what the input holds; whether it made progress.
    fn advance(&mut self) -> Result<bool, ChunkError> {
        match &self.state {
            ChunkState::Header => self.chunk_header(),
            ChunkState::Data { .. } => self.chunk_data(),
            ChunkState::Trailers { .. } => self.trailer_line(),
            ChunkState::Done => {
                if self.input.is_empty() {
                    Ok(false)
                } else {
                    Err(ChunkError::Malformed("data after the final chunk"))
                }
            }
        }
    }

    fn chunk_header(&mut self) -> Result<bool, ChunkError> {
        let Some(line) = self.line()? else {
            return Ok(false);
        };
        let (size_text, signature) =
            line.split_once(";chunk-signature=")
                .ok_or(ChunkError::Malformed(
                    "a chunk header without chunk-signature",
                ))?;
        if signature.len() != 64 || !signature.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ChunkError::Malformed(
                "a chunk signature is not 64 hex digits",
            ));
        }
        if size_text.is_empty()
            || size_text.len() > 8
            || !size_text.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(ChunkError::Malformed("a chunk size is not hex"));
        }
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| ChunkError::Malformed("a chunk size is not hex"))?;
        if size > BUFFER_LIMIT {
            return Err(ChunkError::TooLarge);
        }
        if size == 0 {
            let signature = self.signer.chunk(&Bytes::new())?;
            self.output
                .push_back(format!("{size_text};chunk-signature={signature}\r\n").into());
            self.state = ChunkState::Trailers {
                lines: Vec::new(),
                signed: false,
                bytes: 0,
            };
        } else {
            self.state = ChunkState::Data {
                size_text: size_text.to_owned(),
                size,
            };
        }
        Ok(true)
    }

    fn chunk_data(&mut self) -> Result<bool, ChunkError> {
        let ChunkState::Data { size_text, size } = &self.state else {
            unreachable!("called in the Data state");
        };
        let size = *size;
        if self.input.len() < size + 2 {
            return Ok(false);
        }
        let head = format!("{size_text};chunk-signature=");
        let data = self.input.split_to(size).freeze();
        if &self.input[..2] != b"\r\n" {
            return Err(ChunkError::Malformed("chunk data longer than its size"));
        }
        self.input.advance(2);
        let signature = self.signer.chunk(&data)?;
        self.output
            .push_back(format!("{head}{signature}\r\n").into());
        self.output.push_back(data);
        self.output.push_back(Bytes::from_static(b"\r\n"));
        self.state = ChunkState::Header;
        Ok(true)
    }

    fn trailer_line(&mut self) -> Result<bool, ChunkError> {
        let Some(line) = self.line()? else {
            return Ok(false);
        };
        let ChunkState::Trailers {
            lines,
            signed,
            bytes,
        } = &mut self.state
        else {
            unreachable!("called in the Trailers state");
        };
        *bytes += line.len() + 2;
        if *bytes > TRAILER_LIMIT {
            return Err(ChunkError::Malformed("the trailing headers are too long"));
        }
        if !line.is_empty() {
            let (name, value) = line
                .split_once(':')
                .ok_or(ChunkError::Malformed("a trailing header without `:`"))?;
            if name.eq_ignore_ascii_case(TRAILER_SIGNATURE) {
                if *signed {
                    return Err(ChunkError::Malformed("two trailer signatures"));
                }
                *signed = true;
            } else {
                lines.push((name.to_owned(), value.to_owned()));
            }
            return Ok(true);
        }
        let (lines, signed) = (std::mem::take(lines), *signed);
        if !self.trailer_expected && (signed || !lines.is_empty()) {
            return Err(ChunkError::Malformed(
                "trailing headers, but x-amz-content-sha256 is STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
            ));
        }
        if !lines.is_empty() && !signed {
            return Err(ChunkError::Malformed(
                "trailing headers without x-amz-trailer-signature",
            ));
        }
        let mut out = String::new();
        for (name, value) in &lines {
            out.push_str(name);
            out.push(':');
            out.push_str(value);
            out.push_str("\r\n");
        }
        if signed {
            let signature = self.signer.trailer(&lines)?;
            out.push_str(TRAILER_SIGNATURE);
            out.push(':');
            out.push_str(&signature);
            out.push_str("\r\n");
        }
        out.push_str("\r\n");
        self.output.push_back(out.into());
        self.state = ChunkState::Done;
        Ok(true)
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            if let Some(bytes) = self.output.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(bytes))));
            }
            match self.advance() {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => {
                    self.state = ChunkState::Done;
                    self.input.clear();
                    self.inner_done = true;
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
            }
            if self.inner_done {
                if !matches!(self.state, ChunkState::Done) {
                    self.state = ChunkState::Done;
                    return Poll::Ready(Some(Err(Box::new(ChunkError::Truncated))));
                }
                return Poll::Ready(self.http_trailers.take().map(|t| Ok(Frame::trailers(t))));
            }
            match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => self.input.extend_from_slice(&data),
                    Err(frame) => {
                        if let Ok(t) = frame.into_trailers() {
                            self.http_trailers
                                .get_or_insert_with(HeaderMap::new)
                                .extend(t);
                        }
                    }
                },
                Poll::Ready(Some(Err(e))) => {
                    self.inner_done = true;
                    self.state = ChunkState::Done;
                    return Poll::Ready(Some(Err(e.into())));
                }
                Poll::Ready(None) => self.inner_done = true,
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// An error with its sources (the chain's errors wrap the reason).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7";

    #[test]
    fn authorization_header_is_parsed() {
        let a = SigV4Authorization::parse(GOOD).unwrap();
        assert_eq!(a.access_key_id, "AKIDEXAMPLE");
        assert_eq!(a.date, "20150830");
        assert_eq!(
            (a.region.as_str(), a.service.as_str()),
            ("us-east-1", "iam")
        );
        assert_eq!(a.signed_headers, ["content-type", "host", "x-amz-date"]);
        assert!(!format!("{a:?}").contains("AKIDEXAMPLE"));
        // Comma without space (some SDKs).
        let compact = GOOD.replace(", ", ",");
        assert_eq!(SigV4Authorization::parse(&compact).unwrap(), a);
    }

    #[test]
    fn bad_authorization_headers_are_errors() {
        let sig = "5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7";
        let cases = [
            String::new(),
            "AWS4-HMAC-SHA256".into(),
            "Bearer abc".into(),
            GOOD.replace("AWS4-HMAC-SHA256", "AWS4-ECDSA-P256-SHA256"),
            GOOD.replace("AWS4-HMAC-SHA256", "AWS"),
            GOOD.replace("/aws4_request", "/aws5_request"),
            GOOD.replace("/iam/", "/"),
            GOOD.replace("/iam/", "/iam/x/"),
            GOOD.replace("20150830", "2015083"),
            GOOD.replace("us-east-1", "US_EAST"),
            GOOD.replace("AKIDEXAMPLE", ""),
            GOOD.replace("content-type;host;x-amz-date", "content-type;x-amz-date"),
            GOOD.replace("content-type;host", "Content-Type;host"),
            GOOD.replace("content-type;host", ";host"),
            GOOD.replace(sig, "abc"),
            GOOD.replace(sig, &"g".repeat(64)),
            GOOD.replace(", Signature", ", Signature=x, Signature"),
            GOOD.replace(", Signature=", ", Extra=1, Signature="),
            GOOD.replace(", SignedHeaders=content-type;host;x-amz-date", ""),
            GOOD.replace("Credential=", "Credential"),
            format!("{GOOD}\u{e9}"),
        ];
        for case in &cases {
            let e = SigV4Authorization::parse(case).unwrap_err();
            assert!(matches!(e, SigV4Error::Authorization(_)), "{case}: {e}");
        }
    }

    #[test]
    fn resigned_body_boxes_as_the_proxys_body() {
        fn boxes<B: Body<Data = Bytes, Error = BoxError> + Send + Sync + 'static>(_: Option<B>) {}
        boxes(None::<ResignedBody<hyper::body::Incoming>>);
    }

    #[test]
    fn content_sha256_selects_the_payload_handling() {
        let of = |v: Option<&str>| {
            let mut h = HeaderMap::new();
            if let Some(v) = v {
                h.insert(CONTENT_SHA256, HeaderValue::from_str(v).unwrap());
            }
            Payload::of(&h)
        };
        assert!(matches!(of(None), Ok(Payload::Compute)));
        assert!(matches!(of(Some(&"ab".repeat(32))), Ok(Payload::Hash(_))));
        assert!(matches!(of(Some(UNSIGNED_PAYLOAD)), Ok(Payload::Unsigned)));
        assert!(matches!(
            of(Some(STREAMING_SIGNED_TRAILER)),
            Ok(Payload::Chunked { trailer: true })
        ));
        assert!(matches!(
            of(Some("STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD")),
            Err(SigV4Error::ContentSha256)
        ));
        assert!(matches!(of(Some("abc")), Err(SigV4Error::ContentSha256)));
    }
}
