//! The writes a device signs: token versions, defaults, audit entries, its own name (DESIGN
//! §3). Each is made here, signed with this device's identity key, and written by `VaultDoc`;
//! none is committed here.

use handoff_protocol::TokenId;

use super::{Device, DeviceError, check_name};
use crate::doc::schema::{Member, Service, Token, VaultState};
use crate::entropy::unix_now;

impl Device {
    /// Refuses a token or default write on a device whose role may not make one (a `remote`
    /// device): every member would refuse the change it made.
    pub(super) fn require_token_writer(&self, state: &VaultState) -> Result<(), DeviceError> {
        match state.members.get(&self.record.device_id) {
            Some(m) if !m.role.writes_tokens() => Err(DeviceError::RoleForbids {
                role: m.role,
                what: "change tokens or defaults",
            }),
            _ => Ok(()),
        }
    }

    /// Gives this device another name in the vault (the one other members list it by): the
    /// one field of its member record it writes itself.
    pub fn rename_self(&mut self, name: &str) -> Result<Member, DeviceError> {
        check_name(name, "device name")?;
        let state = self.state()?;
        let mut member = state
            .members
            .get(&self.record.device_id)
            .cloned()
            .ok_or(DeviceError::Inconsistent("this device is not a member"))?;
        if member.name == name {
            return Ok(member);
        }
        member.name = name.to_string();
        self.doc.put_member_name(&member.device, name)?;
        self.audit("member.rename", &member.device.to_hex())?;
        self.doc.commit("member.rename", |m| self.keys.sign(m));
        self.persist()?;
        Ok(member)
    }

    /// Writes `token` as the record's next version, signed by this device (its writer from
    /// now on). Not committed.
    pub(crate) fn write_token(
        &mut self,
        state: &VaultState,
        token: &mut Token,
    ) -> Result<(), DeviceError> {
        token.version = next_version(token.version)?;
        token.updated_by = self.record.device_id.to_hex();
        token.verified = true;
        token.conflicted = false;
        let statement = handoff_protocol::binding::token_version_statement(
            &state.info.id,
            &token.signed_fields(),
        );
        let sig = self.keys.sign(&statement);
        self.doc.put_token(token, &sig)?;
        Ok(())
    }

    /// Makes `token` the default of `service` (or clears it) as the default's next version,
    /// signed by this device. Not committed.
    pub(crate) fn write_default(
        &mut self,
        state: &VaultState,
        service: Service,
        token: Option<&TokenId>,
    ) -> Result<(), DeviceError> {
        let choice = crate::doc::DefaultChoice {
            service,
            token: token.copied(),
            version: next_version(
                state
                    .default_versions
                    .get(service.as_str())
                    .copied()
                    .unwrap_or(0),
            )?,
            at: unix_now(),
            writer: self.record.device_id.to_hex(),
        };
        let sig = self.keys.sign(&choice.statement(&state.info.id));
        self.doc.set_default(&choice, &sig)?;
        Ok(())
    }

    /// Appends an audit entry by this device, signed. Not committed.
    /// Writes one audit entry of this device's own as a change of its own, persisted (a
    /// remote spawn request, answered).
    pub fn audit_event(&mut self, action: &str, subject: &str) -> Result<(), DeviceError> {
        self.audit(action, subject)?;
        self.doc.commit(action, |m| self.keys.sign(m));
        self.persist()
    }

    pub(crate) fn audit(&mut self, action: &str, subject: &str) -> Result<(), DeviceError> {
        let me = self.record.device_id;
        self.doc
            .audit(&me, action, subject, |m| self.keys.sign(m))?;
        Ok(())
    }
}

/// The version after `seen`, the highest of a record's versions.
fn next_version(seen: u64) -> Result<u64, DeviceError> {
    seen.checked_add(1).ok_or(DeviceError::InvalidInput(
        "this record's version counter is spent; add the token again under a new label".into(),
    ))
}
