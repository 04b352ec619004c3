//! Where the store is: the one place that tells a directory (the embedded store) from a
//! PostgreSQL server, by the value of `--store`.

use std::ffi::OsStr;
use std::fmt;
use std::path::{Path, PathBuf};

use tidings::store::{validate_postgres_schema, DEFAULT_SCHEMA, MAX_SCHEMA_LEN};

/// The URL schemes that name a PostgreSQL server.
const POSTGRES_SCHEMES: [&str; 2] = ["postgres://", "postgresql://"];

/// The store named by `--store`: a directory, or a PostgreSQL server.
///
/// Shown (by `Display` and `Debug`) with any password in the URL replaced by `***`.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// The embedded store in this directory, which one process at a time opens.
    Directory(PathBuf),
    /// A PostgreSQL server (`postgres://user@host:port/db` or `postgresql://...`), which several
    /// processes share; the schema is named apart (`--schema`).
    Postgres(String),
}

impl StoreLocation {
    /// A `postgres://` or `postgresql://` URL names a server; anything else is a directory.
    pub fn parse(value: &OsStr) -> StoreLocation {
        match value.to_str() {
            Some(url)
                if POSTGRES_SCHEMES
                    .iter()
                    .any(|s| has_prefix_ignore_case(url, s)) =>
            {
                StoreLocation::Postgres(url.to_owned())
            }
            _ => StoreLocation::Directory(PathBuf::from(value)),
        }
    }

    /// Whether other processes may have the store open at the same time (a server), so that a
    /// subscription recorded as running may be running elsewhere.
    pub fn is_shared(&self) -> bool {
        matches!(self, StoreLocation::Postgres(_))
    }
}

fn has_prefix_ignore_case(s: &str, prefix: &str) -> bool {
    s.len() >= prefix.len()
        && s.is_char_boundary(prefix.len())
        && s[..prefix.len()].eq_ignore_ascii_case(prefix)
}

impl fmt::Display for StoreLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreLocation::Directory(path) => write!(f, "{}", path.display()),
            StoreLocation::Postgres(url) => f.write_str(&redact(url)),
        }
    }
}

impl fmt::Debug for StoreLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreLocation::Directory(path) => f.debug_tuple("Directory").field(path).finish(),
            StoreLocation::Postgres(url) => f.debug_tuple("Postgres").field(&redact(url)).finish(),
        }
    }
}

/// The clap parser of `--store` (any bytes: a directory's name need not be UTF-8).
#[derive(Clone, Copy, Debug)]
pub(crate) struct StoreLocationParser;

impl clap::builder::TypedValueParser for StoreLocationParser {
    type Value = StoreLocation;

    fn parse_ref(
        &self,
        _cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<StoreLocation, clap::Error> {
        Ok(StoreLocation::parse(value))
    }
}

/// Checks `--schema` as the PostgreSQL store does (so that a bad name is a usage error before
/// anything connects): 1 to [`MAX_SCHEMA_LEN`] of `a-z`, `0-9` and `_`, not starting with a digit.
pub(crate) fn parse_schema(name: &str) -> Result<String, String> {
    match validate_postgres_schema(name) {
        Ok(()) => Ok(name.to_owned()),
        Err(_) => Err(format!(
            "a schema name is 1 to {MAX_SCHEMA_LEN} of a-z, 0-9 and _, not starting with a digit"
        )),
    }
}

/// The store a command runs on, with the schema resolved.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Target<'a> {
    /// The embedded store's directory.
    Directory(&'a Path),
    /// A schema on a PostgreSQL server.
    Postgres {
        /// The server's URL (may hold a password: show it through [`redact`]).
        url: &'a str,
        /// The schema.
        schema: &'a str,
    },
}

impl<'a> Target<'a> {
    /// The target of `store` with `schema` (the default schema when none is given).
    pub fn new(store: &'a StoreLocation, schema: Option<&'a str>) -> Self {
        match store {
            StoreLocation::Directory(path) => Target::Directory(path),
            StoreLocation::Postgres(url) => Target::Postgres {
                url,
                schema: schema.unwrap_or(DEFAULT_SCHEMA),
            },
        }
    }

    /// Whether other processes may use the store at the same time.
    pub fn is_shared(&self) -> bool {
        matches!(self, Target::Postgres { .. })
    }
}

/// `url` with its password, in the user part or as a `password=` parameter, replaced by `***`.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (main, query) = match rest.split_once('?') {
        Some((main, query)) => (main, Some(query)),
        None => (rest, None),
    };
    let authority_end = main.find('/').unwrap_or(main.len());
    let (authority, path) = main.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((user_info, hosts)) => match user_info.split_once(':') {
            Some((user, _)) => format!("{user}:***@{hosts}"),
            None => authority.to_owned(),
        },
        None => authority.to_owned(),
    };
    let mut out = format!("{scheme}://{authority}{path}");
    if let Some(query) = query {
        let params: Vec<String> = query
            .split('&')
            .map(|p| match p.split_once('=') {
                Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
                _ => p.to_owned(),
            })
            .collect();
        out.push('?');
        out.push_str(&params.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_urls_name_a_server_and_anything_else_a_directory() {
        for url in [
            "postgres://root@127.0.0.1:5432/test",
            "postgresql://root@localhost/test",
            "POSTGRES://root@db/test",
        ] {
            let location = StoreLocation::parse(OsStr::new(url));
            assert_eq!(location, StoreLocation::Postgres(url.to_owned()));
            assert!(location.is_shared());
        }
        for dir in [
            "./data",
            "/var/lib/shop",
            "postgres",
            "postgres:/x",
            "host=db",
        ] {
            assert_eq!(
                StoreLocation::parse(OsStr::new(dir)),
                StoreLocation::Directory(dir.into())
            );
        }
    }

    #[test]
    fn passwords_never_show() {
        let cases = [
            (
                "postgres://app:s3cret@db:5432/shop",
                "postgres://app:***@db:5432/shop",
            ),
            (
                "postgresql://app:p@ss@db/shop?sslmode=disable",
                "postgresql://app:***@db/shop?sslmode=disable",
            ),
            (
                "postgres://app@db/shop?password=s3cret&application_name=x",
                "postgres://app@db/shop?password=***&application_name=x",
            ),
            (
                "postgres://root@127.0.0.1:5432/test",
                "postgres://root@127.0.0.1:5432/test",
            ),
        ];
        for (url, shown) in cases {
            assert_eq!(redact(url), shown);
            let location = StoreLocation::Postgres(url.to_owned());
            assert_eq!(location.to_string(), shown);
            assert!(!format!("{location:?}").contains("s3cret"));
        }
    }

    #[test]
    fn schema_names_follow_the_postgres_stores_rule() {
        for ok in ["tidings", "shop_2", "_x", &"a".repeat(MAX_SCHEMA_LEN)] {
            assert_eq!(parse_schema(ok).as_deref(), Ok(ok));
        }
        for bad in [
            "",
            "Tidings",
            "shop-2",
            "2shop",
            "a b",
            "x;drop",
            &"a".repeat(49),
        ] {
            assert!(parse_schema(bad).is_err(), "{bad:?}");
        }
    }
}
