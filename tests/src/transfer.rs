//! A money transfer between accounts, driven by a process manager: the example of issue 14 and
//! `docs/process-managers.md`, shared by the tests and the kill test's child process.
//!
//! A transfer debits its source account, then credits its target; a refused debit declines the
//! transfer; a refused credit (a closed account) refunds the source and fails the transfer.

use serde::{Deserialize, Serialize};
use tidings::aggregate::{Aggregate, AggregateRegistry, CommandEnvelope};
use tidings::process::{Dispatched, ProcessManager, Reacts, Steps};
use tidings::subscription::HandlerError;
use tidings::{async_trait, DomainEvent, ProcessManager};

/// Events of an account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, DomainEvent)]
pub enum AccountEvent {
    /// Money arrived (for a transfer, or from outside when `transfer` is `None`).
    Deposited {
        /// How much.
        cents: u64,
        /// The transfer it belongs to.
        transfer: Option<String>,
    },
    /// Money left for a transfer.
    Withdrawn {
        /// How much.
        cents: u64,
        /// The transfer it belongs to.
        transfer: String,
    },
    /// The account takes no more deposits.
    Closed,
}

/// Commands of an account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AccountCommand {
    /// Adds money.
    Deposit {
        /// How much.
        cents: u64,
        /// For which transfer.
        transfer: Option<String>,
    },
    /// Takes money for a transfer, if the balance allows.
    Withdraw {
        /// How much.
        cents: u64,
        /// For which transfer.
        transfer: String,
    },
    /// Closes the account.
    Close,
}

/// Why an account refuses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum AccountError {
    /// Not enough money.
    #[error("balance {balance} is less than {requested}")]
    InsufficientFunds {
        /// The balance.
        balance: u64,
        /// What was asked.
        requested: u64,
    },
    /// The account is closed.
    #[error("the account is closed")]
    Closed,
}

/// An account: a balance that never goes negative.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Account {
    /// The balance.
    pub balance: u64,
    /// Closed accounts refuse deposits.
    pub closed: bool,
}

impl Aggregate for Account {
    const CATEGORY: &'static str = "account";
    type Command = AccountCommand;
    type Event = AccountEvent;
    type Error = AccountError;

    fn handle(&self, command: AccountCommand) -> Result<Vec<AccountEvent>, AccountError> {
        match command {
            AccountCommand::Deposit { .. } if self.closed => Err(AccountError::Closed),
            AccountCommand::Deposit { cents, transfer } => {
                Ok(vec![AccountEvent::Deposited { cents, transfer }])
            }
            AccountCommand::Withdraw { cents, .. } if cents > self.balance => {
                Err(AccountError::InsufficientFunds {
                    balance: self.balance,
                    requested: cents,
                })
            }
            AccountCommand::Withdraw { cents, transfer } => {
                Ok(vec![AccountEvent::Withdrawn { cents, transfer }])
            }
            AccountCommand::Close => Ok(vec![AccountEvent::Closed]),
        }
    }

    fn apply(&mut self, event: &AccountEvent) {
        match event {
            AccountEvent::Deposited { cents, .. } => self.balance += cents,
            AccountEvent::Withdrawn { cents, .. } => self.balance -= cents,
            AccountEvent::Closed => self.closed = true,
        }
    }
}

/// Events of a transfer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, DomainEvent)]
pub enum TransferEvent {
    /// Asked for.
    TransferRequested {
        /// The transfer.
        id: String,
        /// From this account.
        from: String,
        /// To this one.
        to: String,
        /// How much.
        cents: u64,
    },
    /// The money moved.
    TransferCompleted,
    /// The source could not pay: nothing moved.
    TransferDeclined {
        /// Why.
        reason: String,
    },
    /// The target refused the money, which went back to the source.
    TransferFailed {
        /// Why.
        reason: String,
    },
}

/// Commands of a transfer: each is recorded once, the end states only after a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TransferCommand {
    /// Asks for a transfer.
    Request {
        /// The transfer's id (the aggregate's).
        id: String,
        /// From this account.
        from: String,
        /// To this one.
        to: String,
        /// How much.
        cents: u64,
    },
    /// Records the end: completed.
    Complete,
    /// Records the end: declined.
    Decline(String),
    /// Records the end: failed and refunded.
    Fail(String),
}

/// Why a transfer refuses a command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum TransferError {
    /// Requested twice, or ended twice, or ended before it was requested.
    #[error("not allowed in this state: {0}")]
    Invalid(String),
}

/// A transfer's record.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Transfer {
    /// Requested (its id).
    pub requested: Option<String>,
    /// Ended.
    pub ended: bool,
}

impl Aggregate for Transfer {
    const CATEGORY: &'static str = "transfer";
    type Command = TransferCommand;
    type Event = TransferEvent;
    type Error = TransferError;

    fn handle(&self, command: TransferCommand) -> Result<Vec<TransferEvent>, TransferError> {
        let invalid = |what: &str| Err(TransferError::Invalid(what.to_owned()));
        match command {
            TransferCommand::Request { .. } if self.requested.is_some() => {
                invalid("requested twice")
            }
            TransferCommand::Request {
                id,
                from,
                to,
                cents,
            } => Ok(vec![TransferEvent::TransferRequested {
                id,
                from,
                to,
                cents,
            }]),
            _ if self.requested.is_none() => invalid("ended before it was requested"),
            _ if self.ended => invalid("ended twice"),
            TransferCommand::Complete => Ok(vec![TransferEvent::TransferCompleted]),
            TransferCommand::Decline(reason) => {
                Ok(vec![TransferEvent::TransferDeclined { reason }])
            }
            TransferCommand::Fail(reason) => Ok(vec![TransferEvent::TransferFailed { reason }]),
        }
    }

    fn apply(&mut self, event: &TransferEvent) {
        match event {
            TransferEvent::TransferRequested { id, .. } => self.requested = Some(id.clone()),
            _ => self.ended = true,
        }
    }
}

/// Where a transfer's process is.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stage {
    /// Not started.
    #[default]
    New,
    /// Waiting for the debit.
    Debiting {
        /// From.
        from: String,
        /// To.
        to: String,
        /// How much.
        cents: u64,
    },
    /// Debited; waiting for the credit.
    Crediting {
        /// From.
        from: String,
        /// How much.
        cents: u64,
    },
    /// The credit was refused; waiting for the refund.
    Refunding {
        /// Why the credit was refused.
        reason: String,
    },
}

/// A command of the transfer process: to an account or to the transfer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Step {
    /// To account `.0`.
    Account(String, AccountCommand),
    /// To transfer `.0`.
    Transfer(String, TransferCommand),
}

/// The transfer process manager.
#[derive(Clone, ProcessManager)]
#[process_manager(name = "transfers", events(TransferEvent, AccountEvent))]
pub struct Transfers {
    /// The accounts.
    pub accounts: AggregateRegistry<Account>,
    /// The transfers.
    pub transfers: AggregateRegistry<Transfer>,
}

#[async_trait]
impl ProcessManager for Transfers {
    type State = Stage;
    type Command = Step;

    async fn send(&mut self, command: CommandEnvelope<Step>) -> Result<Dispatched, HandlerError> {
        match command.command.clone() {
            Step::Account(account, c) => {
                let envelope = command.map(|_| c);
                Dispatched::from_result(self.accounts.execute(&account, envelope).await)
            }
            Step::Transfer(transfer, c) => {
                let envelope = command.map(|_| c);
                Dispatched::from_result(self.transfers.execute(&transfer, envelope).await)
            }
        }
    }

    fn refused(&self, stage: &mut Stage, step: &str, reason: &str, steps: &mut Steps<Step>) {
        let id = steps.instance().to_owned();
        match (step, stage.clone()) {
            ("debit", _) => {
                steps.send(
                    "decline",
                    Step::Transfer(id, TransferCommand::Decline(reason.into())),
                );
                steps.finish();
            }
            ("credit", Stage::Crediting { from, cents }) => {
                *stage = Stage::Refunding {
                    reason: reason.to_owned(),
                };
                let refund = AccountCommand::Deposit {
                    cents,
                    transfer: Some(id),
                };
                steps.send("refund", Step::Account(from, refund));
            }
            // The end states are recorded once; a refusal of one means it is recorded already.
            _ => {}
        }
    }
}

impl Reacts<TransferEvent> for Transfers {
    fn correlate(event: &TransferEvent) -> Option<String> {
        match event {
            TransferEvent::TransferRequested { id, .. } => Some(id.clone()),
            _ => None,
        }
    }

    fn react(&self, stage: &mut Stage, event: TransferEvent, steps: &mut Steps<Step>) {
        if let TransferEvent::TransferRequested {
            id,
            from,
            to,
            cents,
        } = event
        {
            if *stage != Stage::New {
                return;
            }
            *stage = Stage::Debiting {
                from: from.clone(),
                to,
                cents,
            };
            let debit = AccountCommand::Withdraw {
                cents,
                transfer: id,
            };
            steps.send("debit", Step::Account(from, debit));
        }
    }
}

impl Reacts<AccountEvent> for Transfers {
    fn correlate(event: &AccountEvent) -> Option<String> {
        match event {
            AccountEvent::Withdrawn { transfer, .. } => Some(transfer.clone()),
            AccountEvent::Deposited { transfer, .. } => transfer.clone(),
            AccountEvent::Closed => None,
        }
    }

    fn react(&self, stage: &mut Stage, event: AccountEvent, steps: &mut Steps<Step>) {
        let id = steps.instance().to_owned();
        match (event, stage.clone()) {
            (AccountEvent::Withdrawn { .. }, Stage::Debiting { from, to, cents }) => {
                *stage = Stage::Crediting { from, cents };
                let credit = AccountCommand::Deposit {
                    cents,
                    transfer: Some(id),
                };
                steps.send("credit", Step::Account(to, credit));
            }
            (AccountEvent::Deposited { .. }, Stage::Crediting { .. }) => {
                steps.send("complete", Step::Transfer(id, TransferCommand::Complete));
                steps.finish();
            }
            (AccountEvent::Deposited { .. }, Stage::Refunding { reason }) => {
                steps.send("fail", Step::Transfer(id, TransferCommand::Fail(reason)));
                steps.finish();
            }
            _ => {}
        }
    }
}
