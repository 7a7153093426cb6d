//! Certificate renewal through a server: `POST /v1/identity/renew` on the cluster API,
//! over mutual TLS only. The caller proves who it is with the certificate it renews;
//! the new one names exactly that node (cluster, address, role), whatever the request
//! holds, which is only a CSR for the caller's new key. The TLS layer has already
//! refused an expired, revoked or foreign certificate.
//!
//! The old certificate is not revoked: it keeps working, for connections that hold it
//! and for a node that could not write the new one, until it expires (a third of its
//! lifetime at most). The record `node rm` reads names the new serial and keeps the
//! earlier ones, which it revokes too. Only a certificate in its last third renews.

use std::time::UNIX_EPOCH;

use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::{ISSUED_PREFIX, IssuedV1};
use crate::addressing::NodeAddress;
use crate::consul::client::Consul;
use crate::http::ApiError;
use crate::identity::{Ca, CertInfo, Issued, NODE_CERT_VALIDITY, NodeIdentity};

/// `POST /v1/identity/renew`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewRequestV1 {
    /// For the caller's new key; only its public key is used.
    pub csr: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewResponseV1 {
    pub cert: String,
}

/// The certificate a renewal gets: for the node the caller's verified certificate
/// names (`None` on the unix socket, where no certificate was shown).
pub fn issue_renewal(
    ca: &Ca,
    caller: Option<&NodeIdentity>,
    req: &RenewRequestV1,
) -> Result<Issued, ApiError> {
    let caller = caller.ok_or_else(|| {
        ApiError(
            StatusCode::FORBIDDEN,
            "renewal is over mutual TLS on the cluster API (10.255.a.b:7100): the certificate the caller shows is the one renewed".into(),
        )
    })?;
    ca.issue(&req.csr, caller, NODE_CERT_VALIDITY)
        .map_err(|e| ApiError::bad_request(format!("csr: {e}")))
}

/// Points `node rm` at the node's new certificate. The node's Consul name is kept from
/// the record its join left; a node enrolled without a join (the boot node, a lab) gets
/// `fallback_name`.
pub async fn record_issued(
    consul: &Consul,
    address: NodeAddress,
    issued: &Issued,
    role: &str,
    fallback_name: Option<String>,
) -> Result<(), RecordError> {
    let key = format!("{ISSUED_PREFIX}{address}");
    let previous: Option<IssuedV1> = match consul.kv_get(&key).await {
        Ok(Some(bytes)) => Some(
            crate::http::parse_json(&bytes)
                .map_err(|why| RecordError(format!("Consul key {key}: {why}")))?,
        ),
        Ok(None) => None,
        Err(e) => return Err(RecordError(format!("read Consul key {key}: {e}"))),
    };
    let mut earlier = previous
        .as_ref()
        .map(|p| {
            let mut e = p.earlier.clone();
            if p.serial != issued.serial {
                e.push(p.serial.clone());
            }
            e
        })
        .unwrap_or_default();
    let skip = earlier.len().saturating_sub(super::EARLIER_KEPT);
    earlier.drain(..skip);
    let name = previous.map(|p| p.name).or(fallback_name).ok_or_else(|| {
        RecordError(format!(
            "Consul key {key}: no record of the node, and it is not in the catalog (yet)"
        ))
    })?;
    let info =
        CertInfo::from_pem(&issued.cert_pem).map_err(|e| RecordError(format!("{key}: {e}")))?;
    let record = IssuedV1 {
        serial: issued.serial.clone(),
        name,
        role: role.to_string(),
        not_after: info
            .not_after
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        earlier,
    };
    consul
        .kv_put(
            &key,
            serde_json::to_vec(&record).expect("a record serializes"),
        )
        .await
        .map_err(|e| RecordError(format!("write Consul key {key}: {e}")))
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct RecordError(pub String);

/// The Consul node name of `address` as the catalog believes it.
pub async fn catalog_name(consul: &Consul, address: NodeAddress) -> Option<String> {
    let (entries, _) = consul
        .healthy_instances(
            crate::consul::node::SERVICE,
            None,
            std::time::Duration::ZERO,
        )
        .await
        .ok()?;
    let (believed, _) = crate::consul::node::believed(&entries);
    believed
        .into_iter()
        .find(|e| {
            e.service
                .meta
                .get("arpanet_address")
                .is_some_and(|a| a.parse::<NodeAddress>().ok() == Some(address))
        })
        .map(|e| e.node.node.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{NodeKey, Role};

    fn caller() -> NodeIdentity {
        NodeIdentity {
            cluster: "apples".into(),
            address: "0.7".parse().unwrap(),
            role: Role::Client,
        }
    }

    /// A CSR for `key` that asks to be a server at 0.9.
    fn greedy_csr(key_pem: &str) -> String {
        let key = rcgen::KeyPair::from_pem(key_pem).unwrap();
        let mut params =
            rcgen::CertificateParams::new(vec!["server.apples.consul".into()]).unwrap();
        params.subject_alt_names.push(rcgen::SanType::URI(
            "spiffe://apples/server/0.9".try_into().unwrap(),
        ));
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress("10.255.0.9".parse().unwrap()));
        params.serialize_request(&key).unwrap().pem().unwrap()
    }

    #[test]
    fn the_certificate_names_the_caller_whatever_the_request_asks() {
        let ca = Ca::generate("apples").unwrap();
        let key = NodeKey::generate().unwrap();
        let req = RenewRequestV1 {
            csr: greedy_csr(&key.key_pem()),
        };
        let issued = issue_renewal(&ca, Some(&caller()), &req).unwrap();
        let info = CertInfo::from_pem(&issued.cert_pem).unwrap();
        assert_eq!(info.identity, caller());
        assert!(!info.due_for_renewal(std::time::SystemTime::now()));
        assert!(
            crate::identity::renew::key_matches(&issued.cert_pem, &key.key_pem()).unwrap(),
            "for the key of the CSR"
        );
        let der = crate::identity::first_cert_der(&issued.cert_pem).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let san = format!("{:?}", cert.subject_alternative_name().unwrap().unwrap());
        assert!(
            !san.contains("0.9") && !san.contains("server.apples"),
            "{san}"
        );
    }

    #[test]
    fn no_caller_certificate_no_renewal_and_the_request_names_nothing_else() {
        let ca = Ca::generate("apples").unwrap();
        let key = NodeKey::generate().unwrap();
        let req = RenewRequestV1 {
            csr: key.csr_pem().unwrap(),
        };
        let e = issue_renewal(&ca, None, &req).unwrap_err();
        assert_eq!(e.0, StatusCode::FORBIDDEN);
        assert!(e.1.contains("mutual TLS"), "{}", e.1);
        let asks = r#"{"csr": "x", "address": "0.9", "role": "server"}"#;
        assert!(serde_json::from_str::<RenewRequestV1>(asks).is_err());
        let bad = RenewRequestV1 { csr: "junk".into() };
        let e = issue_renewal(&ca, Some(&caller()), &bad).unwrap_err();
        assert_eq!(e.0, StatusCode::BAD_REQUEST);
    }
}
