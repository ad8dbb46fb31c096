//! 32 carts add a product at the price their shoppers saw while the price
//! changes: no item ever commits at a price that was no longer current. A
//! rename at the same moment costs the carts nothing, thanks to the narrower
//! validation query; without it, each cart decides twice.

use dcb_core::{Decision, DecisionError, Query};
use patterns::seen_price::{
    AddItem, ChangePrice, ListProduct, RenameProduct, ShopError, ShopEvent,
};

use crate::race::{report, Counts, Env, Guard};

const CARTS: usize = 32;
const PRODUCT: &str = "teapot";
const OLD_PRICE: u64 = 100;
const NEW_PRICE: u64 = 120;

fn add(cart: usize) -> AddItem {
    AddItem {
        cart: format!("cart-{cart:02}"),
        product: PRODUCT.into(),
        seen_price_cents: OLD_PRICE,
    }
}

/// The same decision, checked against its whole state query: what
/// `AddItem` would be without its `validation_query`.
struct WholeStateCheck(AddItem);

impl Decision for WholeStateCheck {
    type Event = ShopEvent;
    type StateQuery = <AddItem as Decision>::StateQuery;
    type Error = ShopError;

    fn state_query(&self) -> Self::StateQuery {
        self.0.state_query()
    }

    fn validation_query(&self) -> Option<Query> {
        None
    }

    fn process(&self, state: &Self::StateQuery) -> Result<Vec<ShopEvent>, ShopError> {
        self.0.process(state)
    }
}

/// Replays the log: items added at a price that was not the current one.
fn stale_items(log: &[ShopEvent]) -> (usize, Vec<String>) {
    let mut price = None;
    let mut items = 0;
    let mut stale = Vec::new();
    for event in log {
        match event {
            ShopEvent::ProductListed { price_cents, .. }
            | ShopEvent::PriceChanged { price_cents, .. } => price = Some(*price_cents),
            ShopEvent::ProductRenamed { .. } => {}
            ShopEvent::ItemAdded {
                cart, price_cents, ..
            } => {
                items += 1;
                if Some(*price_cents) != price {
                    stale.push(format!(
                        "{cart} added at {price_cents} while the price was {price:?}"
                    ));
                }
            }
        }
    }
    (items, stale)
}

async fn listed(env: &Env) {
    env.maker()
        .make(ListProduct {
            product: PRODUCT.into(),
            name: "Teapot".into(),
            price_cents: OLD_PRICE,
        })
        .await
        .expect("listed");
}

/// Successes and price refusals among `outcomes`.
fn tally<T>(outcomes: &[Result<T, DecisionError<ShopError>>]) -> (usize, usize) {
    let mut successes = 0;
    let mut rejected = 0;
    for outcome in outcomes {
        match outcome {
            Ok(_) => successes += 1,
            Err(DecisionError::Rejected(ShopError::PriceChangedSince { now_cents })) => {
                assert_eq!(*now_cents, NEW_PRICE);
                rejected += 1
            }
            Err(other) => panic!("unexpected outcome: {other}"),
        }
    }
    (successes, rejected)
}

/// Every cart reads the old price; then the price changes; then the carts
/// append. The worst moment for a price change, every time.
async fn price_change_between_read_and_append(guard: Guard) -> (Counts, usize, Vec<String>) {
    let env = Env::new().await;
    listed(&env).await;
    let maker = env.maker();
    let change = async {
        maker
            .make(ChangePrice {
                product: PRODUCT.into(),
                price_cents: NEW_PRICE,
            })
            .await
            .expect("price changed");
    };
    let raced = env
        .race_interleaved(guard, CARTS, change, |racer| async move {
            racer.maker.make(add(racer.index)).await
        })
        .await;
    let (successes, rejected) = tally(&raced.outcomes);
    let log: Vec<ShopEvent> = env.log().await.into_iter().map(|e| e.event).collect();
    let (items, stale) = stale_items(&log);
    report(
        "seen price (change between read and append)",
        guard,
        &raced.counts,
        successes,
        rejected,
        &format!(
            "checked {items} items against the price current at their position: {} stale",
            stale.len()
        ),
    );
    env.cleanup().await;
    (raced.counts, successes, stale)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_price_change_racing_32_carts_never_lets_a_stale_price_commit() {
    const ROUNDS: usize = 3;
    let env = Env::new().await;
    listed(&env).await;
    let mut counts = Counts::default();
    let (mut successes, mut rejected) = (0, 0);
    for round in 0..ROUNDS {
        // The price change is one more racer: whoever appends first wins.
        let raced = env
            .race(Guard::Kept, CARTS + 1, move |racer| async move {
                if racer.index == CARTS {
                    racer
                        .maker
                        .make(ChangePrice {
                            product: PRODUCT.into(),
                            price_cents: if round % 2 == 0 { NEW_PRICE } else { OLD_PRICE },
                        })
                        .await
                        .map(|_| ())
                } else {
                    racer
                        .maker
                        .make(AddItem {
                            seen_price_cents: if round % 2 == 0 { OLD_PRICE } else { NEW_PRICE },
                            ..add(racer.index)
                        })
                        .await
                        .map(|_| ())
                }
            })
            .await;
        counts = counts + raced.counts;
        for (i, outcome) in raced.outcomes.iter().enumerate() {
            match outcome {
                Ok(()) if i < CARTS => successes += 1,
                Ok(()) => {}
                Err(DecisionError::Rejected(ShopError::PriceChangedSince { .. })) => rejected += 1,
                Err(other) => panic!("unexpected outcome: {other}"),
            }
        }
    }
    let log: Vec<ShopEvent> = env.log().await.into_iter().map(|e| e.event).collect();
    let (items, stale) = stale_items(&log);
    report(
        "seen price",
        Guard::Kept,
        &counts,
        successes,
        rejected,
        &format!(
            "{ROUNDS} rounds of {CARTS} carts racing a price change: checked {items} items \
             against the price current at their position, {} stale",
            stale.len()
        ),
    );
    assert_eq!(stale, Vec::<String>::new());
    assert_eq!(items, successes);
    assert_eq!(
        successes + rejected,
        ROUNDS * CARTS,
        "every cart was answered"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_price_change_after_the_carts_read_fails_every_cart() {
    let (counts, successes, stale) = price_change_between_read_and_append(Guard::Kept).await;
    assert_eq!(stale, Vec::<String>::new());
    assert_eq!(
        successes, 0,
        "every cart saw the new price on its second read"
    );
    assert_eq!(counts.conflicts, CARTS, "one conflict per cart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_the_append_condition_carts_commit_a_stale_price() {
    let (_, successes, stale) = price_change_between_read_and_append(Guard::Dropped).await;
    assert_eq!(successes, CARTS);
    assert_eq!(stale.len(), CARTS, "every cart committed the old price");
}

/// A rename lands after every cart read the product: with the narrower
/// validation query no cart retries; checked against the whole state, every
/// cart does.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rename_between_read_and_append_costs_no_retry_with_the_validation_query() {
    let mut conflicts = Vec::new();
    for narrow in [true, false] {
        let env = Env::new().await;
        listed(&env).await;
        let maker = env.maker();
        let rename = async {
            maker
                .make(RenameProduct {
                    product: PRODUCT.into(),
                    name: "Kettle".into(),
                })
                .await
                .expect("renamed");
        };
        let raced = env
            .race_interleaved(Guard::Kept, CARTS, rename, move |racer| async move {
                let add = add(racer.index);
                if narrow {
                    racer.maker.make(add).await
                } else {
                    racer.maker.make(WholeStateCheck(add)).await
                }
            })
            .await;
        let (successes, rejected) = tally(&raced.outcomes);
        assert_eq!(successes, CARTS, "a rename refuses no cart");
        report(
            if narrow {
                "seen price (rename, validation query)"
            } else {
                "seen price (rename, whole state checked)"
            },
            Guard::Kept,
            &raced.counts,
            successes,
            rejected,
            "a rename between every cart's read and append",
        );
        conflicts.push(raced.counts.conflicts);
        env.cleanup().await;
    }
    assert_eq!(conflicts, [0, CARTS]);
}
