//! Where a command's work happens: in the daemon when one serves this home, else directly on
//! the store under the home's lock. Both paths return the same views, so every command prints
//! the same output either way.
//!
//! Through the daemon, an operation that needs the vault key is first sent without a
//! passphrase; only if the daemon answers that it is locked is the passphrase read (file or
//! terminal) and the request sent again with it, for that one operation.

use zeroize::Zeroizing;

use super::{CliError, Context, input};
use crate::control::{
    Client, PeerView, RelayView, RemovedView, Request, Response, StatusView, TokenView,
};
use crate::device::{Device, expose};
use crate::doc::Service;
use crate::spawn::{Agent, Delivery};

/// A command's way to the vault.
#[derive(Debug)]
pub(crate) enum Access {
    Direct,
    Daemon(Client),
}

/// The secret part of an answer, zeroized when dropped.
pub(crate) type Secret = Zeroizing<Vec<u8>>;

impl Access {
    /// The daemon if one answers on this home's socket, else direct access.
    pub fn open(ctx: &Context) -> Self {
        Client::connect(&ctx.home.socket_path()).map_or(Access::Direct, Access::Daemon)
    }

    pub fn call(client: &mut Client, request: &Request) -> Result<Response, CliError> {
        match client
            .call(request)
            .map_err(|e| CliError::Internal(e.to_string()))?
        {
            Response::Error { exit, message } => Err(CliError::Remote { exit, message }),
            other => Ok(other),
        }
    }

    /// Sends `make(None)`; if the daemon is locked, reads the passphrase and sends `make(Some)`.
    pub fn call_unlocking(
        ctx: &Context,
        client: &mut Client,
        make: impl Fn(Option<Vec<u8>>) -> Request,
    ) -> Result<Response, CliError> {
        match Self::call(client, &make(None)) {
            Err(CliError::Remote { exit, .. }) if exit == super::Exit::Locked as u8 => {
                let passphrase = input::passphrase(ctx.passphrase_file.as_deref())?;
                Self::call(client, &make(Some(passphrase.to_vec())))
            }
            other => other,
        }
    }

    pub fn status(&mut self, ctx: &Context) -> Result<StatusView, CliError> {
        match self {
            Access::Direct => {
                let device = Device::open(ctx.home.clone())?;
                Ok(StatusView::of(&device, &device.state()?))
            }
            Access::Daemon(c) => match Self::call(c, &Request::Status)? {
                Response::Status(view) => Ok(view),
                other => Err(unexpected(&other)),
            },
        }
    }

    pub fn tokens(&mut self, ctx: &Context) -> Result<Vec<TokenView>, CliError> {
        match self {
            Access::Direct => Ok(TokenView::all(&Device::open(ctx.home.clone())?.state()?)),
            Access::Daemon(c) => match Self::call(c, &Request::ListTokens)? {
                Response::Tokens(list) => Ok(list),
                other => Err(unexpected(&other)),
            },
        }
    }

    pub fn token(&mut self, ctx: &Context, query: &str) -> Result<TokenView, CliError> {
        match self {
            Access::Direct => {
                let device = Device::open(ctx.home.clone())?;
                let state = device.state()?;
                Ok(TokenView::of(&state, device.find_token(&state, query)?))
            }
            Access::Daemon(c) => token_response(Self::call(
                c,
                &Request::ShowToken {
                    query: query.into(),
                },
            )?),
        }
    }

    pub fn add_token(
        &mut self,
        ctx: &Context,
        service: Service,
        label: &str,
        secret: &[u8],
        default: bool,
        replace: bool,
    ) -> Result<TokenView, CliError> {
        match self {
            Access::Direct => {
                let passphrase = input::passphrase(ctx.passphrase_file.as_deref())?;
                let mut device = Device::open(ctx.home.clone())?;
                let key = device.unlock(&passphrase)?;
                let id = device.add_token(&key, service, label, secret, default, replace)?;
                let state = device.state()?;
                let token = state
                    .tokens
                    .get(&id)
                    .ok_or_else(|| CliError::Internal("the new token vanished".into()))?;
                Ok(TokenView::of(&state, token))
            }
            Access::Daemon(c) => token_response(Self::call_unlocking(ctx, c, |passphrase| {
                Request::AddToken {
                    service: service.as_str().into(),
                    label: label.into(),
                    secret: secret.to_vec(),
                    default,
                    replace,
                    passphrase,
                }
            })?),
        }
    }

    pub fn reveal(&mut self, ctx: &Context, query: &str) -> Result<(TokenView, Secret), CliError> {
        match self {
            Access::Direct => {
                let passphrase = input::passphrase(ctx.passphrase_file.as_deref())?;
                let device = Device::open(ctx.home.clone())?;
                let key = device.unlock(&passphrase)?;
                let (token, secret) = device.reveal(&key, query)?;
                let state = device.state()?;
                Ok((
                    TokenView::of(&state, &token),
                    Zeroizing::new(expose(&secret).to_vec()),
                ))
            }
            Access::Daemon(c) => {
                let response = Self::call_unlocking(ctx, c, |passphrase| Request::Reveal {
                    query: query.into(),
                    passphrase,
                })?;
                match response {
                    Response::Secret { token, secret } => Ok((token, Zeroizing::new(secret))),
                    other => Err(unexpected(&other)),
                }
            }
        }
    }

    pub fn remove(&mut self, ctx: &Context, query: &str) -> Result<TokenView, CliError> {
        match self {
            Access::Direct => {
                let mut device = Device::open(ctx.home.clone())?;
                let token = device.remove_token(query)?;
                Ok(TokenView::of(&device.state()?, &token))
            }
            Access::Daemon(c) => token_response(Self::call(
                c,
                &Request::RemoveToken {
                    query: query.into(),
                },
            )?),
        }
    }

    pub fn set_default(&mut self, ctx: &Context, query: &str) -> Result<TokenView, CliError> {
        match self {
            Access::Direct => {
                let mut device = Device::open(ctx.home.clone())?;
                let token = device.set_default(query)?;
                Ok(TokenView::of(&device.state()?, &token))
            }
            Access::Daemon(c) => token_response(Self::call(
                c,
                &Request::SetDefault {
                    query: query.into(),
                },
            )?),
        }
    }

    pub fn export(&mut self, ctx: &Context) -> Result<Vec<u8>, CliError> {
        match self {
            Access::Direct => Ok(Device::open(ctx.home.clone())?.export()),
            Access::Daemon(c) => match Self::call(c, &Request::Export)? {
                Response::Exported(bytes) => Ok(bytes),
                other => Err(unexpected(&other)),
            },
        }
    }

    pub fn import(&mut self, ctx: &Context, data: Vec<u8>) -> Result<usize, CliError> {
        match self {
            Access::Direct => Ok(Device::open(ctx.home.clone())?.import(&data)?),
            Access::Daemon(c) => match Self::call(c, &Request::Import { data })? {
                Response::Imported(n) => Ok(n),
                other => Err(unexpected(&other)),
            },
        }
    }

    pub fn peers(&mut self, ctx: &Context) -> Result<Vec<PeerView>, CliError> {
        match self {
            Access::Direct => super::peer_cmds::peers_direct(&Device::open(ctx.home.clone())?),
            Access::Daemon(c) => match Self::call(c, &Request::PeerList)? {
                Response::Peers(list) => Ok(list),
                other => Err(unexpected(&other)),
            },
        }
    }

    pub fn remove_peer(&mut self, ctx: &Context, query: &str) -> Result<RemovedView, CliError> {
        match self {
            Access::Direct => {
                let passphrase = input::passphrase(ctx.passphrase_file.as_deref())?;
                let mut device = Device::open(ctx.home.clone())?;
                let key = device.unlock(&passphrase)?;
                let removed = device.remove_member(&key, query)?;
                Ok(RemovedView::of(&device.state()?, &removed))
            }
            Access::Daemon(c) => {
                let response = Self::call_unlocking(ctx, c, |passphrase| Request::PeerRemove {
                    query: query.into(),
                    passphrase,
                })?;
                match response {
                    Response::Removed(view) => Ok(view),
                    other => Err(unexpected(&other)),
                }
            }
        }
    }

    pub fn add_relay(
        &mut self,
        ctx: &Context,
        addrs: &str,
        token: Option<&[u8]>,
    ) -> Result<RelayView, CliError> {
        match self {
            Access::Direct => Ok(RelayView::of(
                &Device::open(ctx.home.clone())?.add_relay(addrs, token)?,
            )),
            Access::Daemon(c) => relay_response(Self::call(
                c,
                &Request::RelayAdd {
                    addrs: addrs.into(),
                    token: token.map(<[u8]>::to_vec),
                },
            )?),
        }
    }

    pub fn relays(&mut self, ctx: &Context) -> Result<Vec<RelayView>, CliError> {
        match self {
            Access::Direct => Ok(Device::open(ctx.home.clone())?
                .relays()?
                .iter()
                .map(RelayView::of)
                .collect()),
            Access::Daemon(c) => match Self::call(c, &Request::RelayList)? {
                Response::Relays(list) => Ok(list),
                other => Err(unexpected(&other)),
            },
        }
    }

    pub fn remove_relay(&mut self, ctx: &Context, query: &str) -> Result<RelayView, CliError> {
        match self {
            Access::Direct => Ok(RelayView::of(
                &Device::open(ctx.home.clone())?.remove_relay(query)?,
            )),
            Access::Daemon(c) => relay_response(Self::call(
                c,
                &Request::RelayRemove {
                    query: query.into(),
                },
            )?),
        }
    }

    /// The credential for spawning `agent` here. Directly, the token is chosen before the
    /// passphrase is asked for, and the home is not held while the user types.
    pub fn credential(
        &mut self,
        ctx: &Context,
        agent: &Agent,
        service: Option<Service>,
        profile: Option<&str>,
    ) -> Result<(Delivery, Secret), CliError> {
        match self {
            Access::Direct => {
                let (token_id, delivery) = {
                    let device = Device::open(ctx.home.clone())?;
                    let state = device.state()?;
                    let token = crate::spawn::choose_token(&state, agent, service, profile)?;
                    (token.id.to_hex(), crate::spawn::delivery_for(agent, token)?)
                };
                let passphrase = input::passphrase(ctx.passphrase_file.as_deref())?;
                let device = Device::open(ctx.home.clone())?;
                let key = device.unlock(&passphrase)?;
                let secret = device.reveal(&key, &token_id)?.1;
                Ok((delivery, Zeroizing::new(expose(&secret).to_vec())))
            }
            Access::Daemon(c) => {
                let response = Self::call_unlocking(ctx, c, |passphrase| Request::Credential {
                    agent: agent.name.clone(),
                    service: service.map(|s| s.as_str().to_string()),
                    profile: profile.map(str::to_string),
                    passphrase,
                })?;
                match response {
                    Response::Credential { delivery, secret } => {
                        Ok((delivery, Zeroizing::new(secret)))
                    }
                    other => Err(unexpected(&other)),
                }
            }
        }
    }
}

fn relay_response(response: Response) -> Result<RelayView, CliError> {
    match response {
        Response::Relay(view) => Ok(view),
        other => Err(unexpected(&other)),
    }
}

fn token_response(response: Response) -> Result<TokenView, CliError> {
    match response {
        Response::Token(view) => Ok(view),
        other => Err(unexpected(&other)),
    }
}

pub(super) fn unexpected(response: &Response) -> CliError {
    let kind = format!("{response:?}");
    let kind = kind
        .split(['(', ' ', '{'])
        .next()
        .unwrap_or("?")
        .to_string();
    CliError::Internal(format!(
        "the daemon answered {kind}, which this command did not expect: restart the daemon"
    ))
}
