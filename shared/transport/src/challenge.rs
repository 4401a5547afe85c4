//! The registry's auth challenge (`WWW-Authenticate`) and the answers to it: Basic credentials,
//! or a Bearer token from the realm the challenge names, for the scopes the requests need.
//!
//! This is the distribution token flow (docker's "token authentication specification"): a
//! request answered 401 with `Bearer realm=…,service=…[,scope=…]` is repeated with a token
//! fetched from `realm` for every scope asked so far (the store's repository, plus whatever a
//! later challenge names: `repository:P:delete` for a delete, `registry:catalog:*` for the
//! catalog). Scopes for one resource are merged (`repository:P:pull,push,delete`), as the
//! registry may name the same actions in any order. Passwords go to the realm as Basic auth
//! (`GET`); an identity token is exchanged as an OAuth2 refresh token (`POST`). A token the
//! registry still finds short (`error="insufficient_scope"`) after all its scopes were asked
//! for means the credentials lack that permission.

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
        /// `insufficient_scope` when the token sent lacked an action the request needs.
        error: Option<String>,
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
        error: get("error").filter(|e| !e.is_empty()),
    })
}

/// Adds the space-separated scopes of `scope` to `scopes`, merging the actions of a resource
/// already there. Returns whether anything was new.
pub(crate) fn merge_scopes(scopes: &mut Vec<String>, scope: &str) -> bool {
    let mut grew = false;
    for wanted in scope.split(' ').filter(|s| !s.is_empty()) {
        let Some((resource, actions)) = wanted.rsplit_once(':') else {
            continue;
        };
        let same = |s: &String| s.rsplit_once(':').is_some_and(|(r, _)| r == resource);
        match scopes.iter_mut().find(|s| same(s)) {
            Some(existing) => {
                let (_, have) = existing.rsplit_once(':').unwrap_or_default();
                let mut merged: Vec<&str> = have.split(',').collect();
                let new: Vec<&str> = actions
                    .split(',')
                    .filter(|a| !a.is_empty() && !merged.contains(a))
                    .collect();
                if !new.is_empty() {
                    merged.extend(new);
                    *existing = format!("{resource}:{}", merged.join(","));
                    grew = true;
                }
            }
            None => {
                scopes.push(wanted.to_owned());
                grew = true;
            }
        }
    }
    grew
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

/// Refuses a plain-HTTP token realm named by an HTTPS registry (`base` is its URL): the
/// credentials would travel in clear text to wherever the realm points (oras refuses it too).
pub(crate) fn check_realm(base: &str, realm: &str) -> Result<(), String> {
    let https = |url: &str| {
        url.get(..8)
            .is_some_and(|s| s.eq_ignore_ascii_case("https://"))
    };
    if https(base) && !https(realm) {
        return Err(format!(
            "the registry is HTTPS but its token realm {realm} is not; refusing to send credentials to it"
        ));
    }
    Ok(())
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
                error: Some("insufficient_scope".into()),
            })
        );
        assert_eq!(
            parse_challenge(r#"bearer realm=https://x/t, service="s\"q""#),
            Some(Challenge::Bearer {
                realm: "https://x/t".into(),
                service: Some("s\"q".into()),
                scope: None,
                error: None,
            })
        );
        assert_eq!(parse_challenge("Bearer service=x"), None);
        assert_eq!(parse_challenge("Negotiate abc"), None);
    }

    #[test]
    fn scopes_of_one_resource_are_merged() {
        let mut scopes = vec!["repository:ns/ws:pull,push".to_owned()];
        // The registry names actions in any order: nothing new.
        assert!(!merge_scopes(&mut scopes, "repository:ns/ws:push,pull"));
        assert!(merge_scopes(&mut scopes, "repository:ns/ws:delete"));
        assert!(merge_scopes(&mut scopes, "registry:catalog:*"));
        assert!(!merge_scopes(
            &mut scopes,
            "registry:catalog:* repository:ns/ws:pull"
        ));
        assert!(merge_scopes(
            &mut scopes,
            "repository:other:pull repository:ns/ws:pull"
        ));
        assert_eq!(
            scopes,
            [
                "repository:ns/ws:pull,push,delete",
                "registry:catalog:*",
                "repository:other:pull"
            ]
        );
    }

    #[test]
    fn an_https_registry_needs_an_https_realm() {
        assert!(check_realm("https://r:5000", "https://auth/token").is_ok());
        assert!(check_realm("https://r:5000", "HTTPS://auth/token").is_ok());
        assert!(check_realm("http://r:5000", "http://auth/token").is_ok());
        let refused = check_realm("https://r:5000", "http://auth/token").unwrap_err();
        assert!(refused.contains("http://auth/token"), "{refused}");
        assert!(check_realm("https://r:5000", "/token").is_err());
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
