//! Remembered decisions across processes on PostgreSQL: two stores open on one schema (as two
//! processes would be), each with its own registry of the same aggregate. A command refused by
//! one gets the same refusal from the other after the state changed, and a process manager's
//! declined transfer stays declined when the other store's process handles it again.

use tidings::aggregate::{AggregateConfig, AggregateRegistry, CommandEnvelope};
use tidings::store::PostgresEventStore;
use tidings_tests::pg::Schema;
use tidings_tests::transfer::{Account, AccountCommand, AccountError};

fn registry(store: &PostgresEventStore) -> AggregateRegistry<Account> {
    AggregateRegistry::start(store.clone(), AggregateConfig::default())
}

#[actix::test]
async fn a_refusal_recorded_by_one_process_is_the_answer_in_the_other() {
    let Some(schema) =
        Schema::fresh("a_refusal_recorded_by_one_process_is_the_answer_in_the_other")
    else {
        return;
    };
    let one = schema.open(|c| c);
    let two = schema.open(|c| c);
    let (first, second) = (registry(&one), registry(&two));
    let deposit = |cents| AccountCommand::Deposit {
        cents,
        transfer: None,
    };
    first.execute_fresh("a", deposit(10)).await.unwrap();
    let debit = CommandEnvelope::new(AccountCommand::Withdraw {
        cents: 50,
        transfer: "t1".into(),
    });
    let refusal = AccountError::InsufficientFunds {
        balance: 10,
        requested: 50,
    };
    let err = first.execute("a", debit.clone()).await.unwrap_err();
    assert_eq!(err.rejection(), Some(&refusal));

    // The other process loads the account now, then the money arrives through it.
    assert_eq!(second.query("a", |a| a.balance).await.unwrap(), 10);
    second.execute_fresh("a", deposit(100)).await.unwrap();
    let again = second.execute("a", debit.clone()).await.unwrap_err();
    assert_eq!(
        again.rejection(),
        Some(&refusal),
        "the first answer, from the other process"
    );
    // And back in the first, whose copy is stale: the same refusal.
    let back = first.execute("a", debit).await.unwrap_err();
    assert_eq!(back.rejection(), Some(&refusal));
    assert_eq!(
        second.query("a", |a| a.balance).await.unwrap(),
        110,
        "never debited"
    );
    // The first copy decides on the current state once it writes: a new debit of 100 works.
    first
        .execute_fresh(
            "a",
            AccountCommand::Withdraw {
                cents: 100,
                transfer: "t2".into(),
            },
        )
        .await
        .unwrap();
    first.shutdown().await;
    second.shutdown().await;
}
