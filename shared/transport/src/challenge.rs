//! The registry's auth challenge (`WWW-Authenticate`) and the answers to it: Basic credentials,
//! or a Bearer token from the realm the challenge names, for the scopes the requests need.
//!
//! This is the distribution token flow (docker's "token authentication specification"): a
//! request answered 401 with `Bearer realm=…,service=…[,scope=…]` is repeated with a token
//! fetched from `realm` for every scope asked so far (the store's repository, plus whatever a
//! later challenge names: `repository:P:delete` for a delete, `registry:catalog:*` for the
//! catalog). Passwords go to the realm as Basic auth (`GET`); an identity token is exchanged as
//! an OAuth2 refresh token (`POST`).

use crate::auth::Credentials;
use base64::Engine as _;

/// One parsed `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

/// Parses the first challenge of a `WWW-Authenticate` value; `None` for schemes wsr cannot
/// answer (or garbage).
pub(crate) fn parse_challenge(value: &str) -> Option<Challenge> {
    let value = value.trim();
    let (scheme, params) = value.split_once(' ').unwrap_or((value, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let params = parse_params(params);
    let get = |key: &str| {
        params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.clone())
    };
    Some(Challenge::Bearer {
        realm: get("realm").filter(|r| !r.is_empty())?,
        service: get("service"),
        scope: get("scope").filter(|s| !s.is_empty()),
    })
}

/// `key=value` or `key="quoted, with commas"` pairs separated by commas.
fn parse_params(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = text.trim_start();
    while let Some(eq) = rest.find('=') {
        let key = rest[..eq].trim().trim_start_matches(',').trim().to_owned();
        rest = &rest[eq + 1..];
        let value = if let Some(quoted) = rest.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next().map(|(_, c)| c)),
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => value.push(c),
                }
            }
            rest = &quoted[end..];
            value
        } else {
            let end = rest.find(',').unwrap_or(rest.len());
            let value = rest[..end].trim().to_owned();
            rest = &rest[end..];
            value
        };
        out.push((key, value));
        rest = rest.trim_start().trim_start_matches(',').trim_start();
    }
    out
}

/// The scope a store needs for its repository: `pull`, or `pull,push` when it writes.
pub(crate) fn repository_scope(path: &str, push: bool) -> Option<String> {
    (!path.is_empty()).then(|| {
        let actions = if push { "pull,push" } else { "pull" };
        format!("repository:{path}:{actions}")
    })
}

/// The `Authorization` value for Basic credentials.
pub(crate) fn basic(username: &str, password: &str) -> String {
    let pair = format!("{username}:{password}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

/// Why a token could not be obtained. `status` 0 means no HTTP answer (the error is in `detail`).
pub(crate) struct TokenFailure {
    pub status: u16,
    pub detail: String,
    pub request: Option<reqwest::Error>,
}

/// Fetches a bearer token from `realm` for `scopes` with `credentials`.
pub(crate) async fn fetch_token(
    http: &reqwest::Client,
    realm: &str,
    service: Option<&str>,
    scopes: &[String],
    credentials: &Credentials,
) -> Result<String, TokenFailure> {
    #[derive(serde::Deserialize)]
    struct TokenResponse {
        token: Option<String>,
        access_token: Option<String>,
    }
    let request = match credentials {
        Credentials::Token(refresh) => {
            let mut form = vec![
                ("grant_type", "refresh_token".to_owned()),
                ("client_id", "wsr".to_owned()),
                ("refresh_token", refresh.clone()),
                ("scope", scopes.join(" ")),
            ];
            if let Some(s) = service {
                form.push(("service", s.to_owned()));
            }
            http.post(realm).form(&form)
        }
        Credentials::Basic { username, password } => http
            .get(realm)
            .query(&token_query(service, scopes))
            .header(reqwest::header::AUTHORIZATION, basic(username, password)),
        Credentials::Anonymous => http.get(realm).query(&token_query(service, scopes)),
    };
    let failure = |e: reqwest::Error| TokenFailure {
        status: 0,
        detail: String::new(),
        request: Some(e),
    };
    let response = request.send().await.map_err(failure)?;
    let status = response.status();
    if !status.is_success() {
        let detail: String = response
            .text()
            .await
            .unwrap_or_default()
            .chars()
            .take(200)
            .collect();
        return Err(TokenFailure {
            status: status.as_u16(),
            detail,
            request: None,
        });
    }
    let body: TokenResponse = response.json().await.map_err(failure)?;
    body.token
        .or(body.access_token)
        .filter(|t| !t.is_empty())
        .ok_or(TokenFailure {
            status: status.as_u16(),
            detail: "the token response has no token".into(),
            request: None,
        })
}

fn token_query<'a>(service: Option<&'a str>, scopes: &'a [String]) -> Vec<(&'static str, &'a str)> {
    let mut query: Vec<(&str, &str)> = service.map(|s| ("service", s)).into_iter().collect();
    query.extend(scopes.iter().map(|s| ("scope", s.as_str())));
    query
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_challenges_registries_send() {
        assert_eq!(
            parse_challenge(r#"Basic realm="wsr-test""#),
            Some(Challenge::Basic)
        );
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push",error="insufficient_scope""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("registry.example".into()),
                scope: Some("repository:a/b:pull,push".into()),
            })
        );
        assert_eq!(
            parse_challenge(r#"bearer realm=https://x/t, service="s\"q""#),
            Some(Challenge::Bearer {
                realm: "https://x/t".into(),
                service: Some("s\"q".into()),
                scope: None,
            })
        );
        assert_eq!(parse_challenge("Bearer service=x"), None);
        assert_eq!(parse_challenge("Negotiate abc"), None);
    }

    #[test]
    fn scopes_follow_the_access() {
        assert_eq!(
            repository_scope("ns/ws", true).as_deref(),
            Some("repository:ns/ws:pull,push")
        );
        assert_eq!(
            repository_scope("ns/ws", false).as_deref(),
            Some("repository:ns/ws:pull")
        );
        assert_eq!(repository_scope("", false), None);
    }
}
