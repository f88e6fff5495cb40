//! Writing the records every writer signs: token versions, defaults, audit entries (each a
//! new map written whole, with its signature), and the schema mark a migration sets.

use automerge::transaction::Transactable;
use automerge::{ObjType, ReadDoc};
use handoff_protocol::DeviceId;

use super::schema::{self, AuditEntry, Token};
use super::{DocError, VaultDoc, bytes};
use crate::entropy::unix_now;

impl VaultDoc {
    /// Writes a new version of a token record, signed by its writer (`t.updated_by`): one map
    /// under `tokens.<id>.current` that supersedes the versions this document holds. The
    /// version is written whole, so concurrent writes leave whole versions side by side.
    pub fn put_token(&mut self, t: &Token, sig: &[u8]) -> Result<(), DocError> {
        self.touched();
        let tokens = self.map(&["tokens"])?;
        let record = self.child_map(&tokens, &t.id.to_hex())?;
        let obj = self.doc.put_object(&record, "current", ObjType::Map)?;
        self.doc.put(&obj, "version", t.version)?;
        self.doc.put(&obj, "service", t.service.as_str())?;
        self.doc.put(&obj, "label", t.label.as_str())?;
        self.doc.put(&obj, "kind", t.kind.as_str())?;
        self.doc.put(&obj, "epoch", t.epoch.to_hex())?;
        if let Some(ct) = &t.ciphertext {
            self.doc.put(&obj, "ciphertext", bytes(ct))?;
        }
        self.doc.put(&obj, "deleted", t.deleted)?;
        self.doc.put(&obj, "created_at", t.created_at)?;
        self.doc.put(&obj, "created_by", t.created_by.as_str())?;
        self.doc.put(&obj, "updated_at", t.updated_at)?;
        self.doc.put(&obj, "updated_by", t.updated_by.as_str())?;
        if let Some(at) = t.expires_at {
            self.doc.put(&obj, "expires_at", at)?;
        }
        if let Some(at) = t.refreshed_at {
            self.doc.put(&obj, "refreshed_at", at)?;
        }
        self.doc.put(&obj, "sig", bytes(sig))?;
        Ok(())
    }

    /// Writes a new version of `token`'s lease, signed by its holder: one map under
    /// `tokens.<id>.lease` that supersedes the versions this document holds.
    pub fn put_lease(
        &mut self,
        token: &handoff_protocol::TokenId,
        l: &schema::Lease,
        sig: &[u8],
    ) -> Result<(), DocError> {
        self.touched();
        let tokens = self.map(&["tokens"])?;
        let record = self.child_map(&tokens, &token.to_hex())?;
        let obj = self.doc.put_object(&record, "lease", ObjType::Map)?;
        self.doc.put(&obj, "version", l.version)?;
        self.doc.put(&obj, "holder", l.holder.as_str())?;
        self.doc.put(&obj, "session", l.session.as_str())?;
        self.doc.put(&obj, "fence", l.fence)?;
        self.doc.put(&obj, "until", l.until)?;
        self.doc.put(&obj, "at", l.at)?;
        self.doc.put(&obj, "sig", bytes(sig))?;
        Ok(())
    }

    /// Marks the document as written in the current schema (after an admin re-signed what it
    /// held from before signatures).
    pub fn set_schema_current(&mut self) -> Result<(), DocError> {
        self.touched();
        self.put_changed(&automerge::ROOT, "schema", schema::SCHEMA_VERSION.into())
    }

    /// Makes `d.token` the default of `d.service` (or clears it), as a new signed version of
    /// that service's default record.
    pub fn set_default(&mut self, d: &schema::DefaultChoice, sig: &[u8]) -> Result<(), DocError> {
        self.touched();
        let defaults = self.map(&["defaults"])?;
        let obj = self
            .doc
            .put_object(&defaults, d.service.as_str(), ObjType::Map)?;
        let token = d.token.map(|t| t.to_hex()).unwrap_or_default();
        self.doc.put(&obj, "token", token)?;
        self.doc.put(&obj, "version", d.version)?;
        self.doc.put(&obj, "at", d.at)?;
        self.doc.put(&obj, "writer", d.writer.as_str())?;
        self.doc.put(&obj, "sig", bytes(sig))?;
        Ok(())
    }

    /// Appends an audit entry by `device`, now, signed with `sign` (its identity key).
    pub fn audit(
        &mut self,
        device: &DeviceId,
        action: &str,
        subject: &str,
        sign: impl Fn(&[u8]) -> [u8; 64],
    ) -> Result<(), DocError> {
        let entry = AuditEntry {
            at: unix_now(),
            device: device.to_hex(),
            action: action.to_string(),
            subject: subject.to_string(),
            verified: true,
        };
        let sig = sign(&entry.statement(&self.anchors.vault));
        self.append_audit(&entry, &sig)
    }

    /// Appends an audit entry signed by its writer (`e.device`), dropping the oldest beyond
    /// the bound.
    pub fn append_audit(&mut self, e: &AuditEntry, sig: &[u8]) -> Result<(), DocError> {
        self.touched();
        let audit = match self.doc.get(automerge::ROOT, "audit")? {
            Some((automerge::Value::Object(ObjType::List), id)) => id,
            _ => {
                return Err(DocError::Schema {
                    path: "audit".into(),
                    problem: "is missing",
                });
            }
        };
        let len = self.doc.length(&audit);
        let entry = self.doc.insert_object(&audit, len, ObjType::Map)?;
        self.doc.put(&entry, "at", e.at)?;
        self.doc.put(&entry, "device", e.device.as_str())?;
        self.doc.put(&entry, "action", e.action.as_str())?;
        self.doc.put(&entry, "subject", e.subject.as_str())?;
        self.doc.put(&entry, "sig", bytes(sig))?;
        while self.doc.length(&audit) > schema::limits::AUDIT_MAX {
            self.doc.delete(&audit, 0)?;
        }
        Ok(())
    }
}
