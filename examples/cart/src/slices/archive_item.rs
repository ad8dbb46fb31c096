//! ArchiveItem (automation only): when a product's price changes, take the
//! items of that product out of every cart that was not submitted, but only
//! the items added **before** the price change (ch. 26).
//!
//! The ordering guarantee comes from positions: the command carries the
//! position of the `PriceChanged` event, and the state remembers the position
//! at which each item now in the cart was added. An item added after the
//! price change keeps its price. The state's fold is a [`SequencedMutate`]:
//! it sees each event's position, which a `StateMutate` fold does not.
//!
//! Idempotent per item: an archived item is no longer in the cart, so a
//! second ArchiveItem for it (a redelivered price change, a second item of
//! the same product in the same cart) decides nothing.

use std::convert::Infallible;

use async_trait::async_trait;
use dcb_core::{
    BoxError, Decision, DecisionMaker, EventStore, Listener, MakeOptions, Position, Query,
    QueryItem, ReadOptions, Sequenced, SequencedMutate, StateQuery,
};
use futures::TryStreamExt;
use uuid::Uuid;

use crate::events::{CartEvent, CartEventTag, CartEventType, CartStream};

/// The command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchiveItem {
    /// The cart.
    pub cart_id: Uuid,
    /// The item.
    pub item_id: Uuid,
    /// The id of the `PriceChanged` event that causes it.
    pub price_changed_event: Uuid,
    /// The position of that event: only items added before it are archived.
    pub price_changed_position: Position,
}

/// An item now in the cart and where it was added.
#[derive(Clone, Debug, PartialEq, Eq)]
struct PlacedItem {
    item_id: Uuid,
    product_id: Uuid,
    added_at: Position,
}

/// What ArchiveItem knows about the cart.
#[derive(Clone, Debug, StateQuery)]
#[state_query(CartStream)]
pub struct ArchiveItemState {
    #[id]
    cart_id: Uuid,
    submitted: bool,
    items: Vec<PlacedItem>,
}

impl ArchiveItemState {
    /// The state of `cart_id` before any event.
    pub fn new(cart_id: Uuid) -> Self {
        ArchiveItemState {
            cart_id,
            submitted: false,
            items: Vec::new(),
        }
    }
}

impl SequencedMutate for ArchiveItemState {
    fn mutate(&mut self, event: Sequenced<CartStream>) {
        match event.event {
            CartStream::CartItemAdded {
                item_id,
                product_id,
                ..
            } => self.items.push(PlacedItem {
                item_id,
                product_id,
                added_at: event.position,
            }),
            CartStream::CartItemRemoved { item_id, .. }
            | CartStream::ItemArchived { item_id, .. } => {
                self.items.retain(|i| i.item_id != item_id)
            }
            CartStream::CartCleared { .. } => self.items.clear(),
            CartStream::CartSubmitted { .. } => self.submitted = true,
            CartStream::CartCreated { .. } => {}
        }
    }
}

impl Decision for ArchiveItem {
    type Event = CartEvent;
    type StateQuery = ArchiveItemState;
    type Error = Infallible;

    fn state_query(&self) -> ArchiveItemState {
        ArchiveItemState::new(self.cart_id)
    }

    fn process(&self, cart: &ArchiveItemState) -> Result<Vec<CartEvent>, Infallible> {
        if cart.submitted {
            return Ok(Vec::new());
        }
        Ok(cart
            .items
            .iter()
            .find(|i| i.item_id == self.item_id && i.added_at < self.price_changed_position)
            .map(|item| CartEvent::ItemArchived {
                cart_id: self.cart_id,
                item_id: item.item_id,
                product_id: item.product_id,
                price_changed_event: self.price_changed_event,
            })
            .into_iter()
            .collect())
    }
}

/// The id (checkpoint) of the archive automation's listener.
pub const ARCHIVE_AUTOMATION_ID: &str = "archive-items-on-price-change";

/// The automation: a listener on `PriceChanged` with its own checkpoint (so a
/// read model's rebuild never re-runs it) that makes an [`ArchiveItem`] for
/// every item of the product added to any cart before the change.
///
/// It finds the candidates in the log itself (every `CartItemAdded` of the
/// product below the change's position), not in a read model, so it never
/// depends on a read model having caught up. Delivery is at least once; the
/// decision makes a repeat harmless.
pub struct ArchiveOnPriceChange<S> {
    maker: DecisionMaker<S>,
}

impl<S: EventStore> ArchiveOnPriceChange<S> {
    /// Archives through `maker`.
    pub fn new(maker: DecisionMaker<S>) -> Self {
        ArchiveOnPriceChange { maker }
    }

    /// The items of `product_id` added to any cart before `before`.
    async fn candidates(
        &self,
        product_id: Uuid,
        before: Position,
    ) -> Result<Vec<(Uuid, Uuid)>, BoxError> {
        let query = Query::from_items([QueryItem::new()
            .types([CartEventType::CartItemAdded])
            .tags([CartEventTag::ProductId.of(product_id)])]);
        let result = self
            .maker
            .store()
            .read(&query, ReadOptions::forwards())
            .await?;
        let mut events = result.events;
        let mut found = Vec::new();
        while let Some(event) = events.try_next().await? {
            if event.position >= before {
                break;
            }
            if let CartEvent::CartItemAdded {
                cart_id, item_id, ..
            } = event.decode::<CartEvent>()?.event
            {
                if !found.contains(&(cart_id, item_id)) {
                    found.push((cart_id, item_id));
                }
            }
        }
        Ok(found)
    }
}

#[async_trait]
impl<S: EventStore + 'static> Listener for ArchiveOnPriceChange<S> {
    type Event = CartEvent;

    fn id(&self) -> &str {
        ARCHIVE_AUTOMATION_ID
    }

    fn query(&self) -> Query {
        Query::types([CartEventType::PriceChanged])
    }

    async fn handle(&self, event: Sequenced<CartEvent>) -> Result<(), BoxError> {
        let CartEvent::PriceChanged { product_id, .. } = event.event else {
            return Ok(());
        };
        let cause = event.metadata.event_id;
        let mut archived = 0usize;
        for (cart_id, item_id) in self.candidates(product_id, event.position).await? {
            let decision = ArchiveItem {
                cart_id,
                item_id,
                price_changed_event: cause,
                price_changed_position: event.position,
            };
            let options = MakeOptions::caused_by(&event);
            let decided = self.maker.make_with(&decision, options).await?;
            archived += decided.events.len();
        }
        tracing::info!(%product_id, price_changed = %cause, archived, "archived items after a price change");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slices::test_support::*;
    use dcb_core::testing::TestHarness;

    const CAUSE: Uuid = Uuid::from_u128(999);

    fn archive(item: u128, price_changed_at: u64) -> ArchiveItem {
        ArchiveItem {
            cart_id: CART,
            item_id: id(item),
            price_changed_event: CAUSE,
            price_changed_position: Position(price_changed_at),
        }
    }

    #[test]
    fn an_item_added_before_the_price_change_is_archived() {
        TestHarness::given([
            created(CART),
            added(CART, 1, 10, "1.00"),
            price_changed(10, "1.00", "2.00"), // position 3
        ])
        .when(archive(1, 3))
        .then([archived(CART, 1, 10, CAUSE)]);
    }

    #[test]
    fn an_item_added_after_the_price_change_keeps_its_price() {
        TestHarness::given([
            created(CART),
            price_changed(10, "1.00", "2.00"), // position 2
            added(CART, 1, 10, "2.00"),
        ])
        .when(archive(1, 2))
        .then([]);
    }

    #[test]
    fn an_item_removed_and_added_again_after_the_change_is_kept() {
        TestHarness::given([
            created(CART),
            added(CART, 1, 10, "1.00"),
            price_changed(10, "1.00", "2.00"), // position 3
            removed(CART, 1),
            added(CART, 1, 10, "2.00"),
        ])
        .when(archive(1, 3))
        .then([]);
    }

    #[test]
    fn a_submitted_cart_is_left_alone() {
        TestHarness::given([
            created(CART),
            added(CART, 1, 10, "1.00"),
            submitted(CART, &[(1, 10, "1.00")]),
            price_changed(10, "1.00", "2.00"), // position 4
        ])
        .when(archive(1, 4))
        .then([]);
    }

    #[test]
    fn an_item_archived_before_is_not_archived_again() {
        TestHarness::given([
            created(CART),
            added(CART, 1, 10, "1.00"),
            price_changed(10, "1.00", "2.00"), // position 3
            archived(CART, 1, 10, CAUSE),
        ])
        .when(archive(1, 3))
        .then([]);
    }

    #[test]
    fn an_item_not_in_the_cart_is_a_no_op() {
        TestHarness::given([
            created(CART),
            added(CART, 1, 10, "1.00"),
            removed(CART, 1),
            price_changed(10, "1.00", "2.00"), // position 4
        ])
        .when(archive(1, 4))
        .then([]);
    }

    #[test]
    fn two_items_of_one_product_are_both_archived() {
        let given = [
            created(CART),
            added(CART, 1, 10, "1.00"),
            added(CART, 2, 10, "1.00"),
            price_changed(10, "1.00", "2.00"), // position 4
        ];
        TestHarness::given(given.clone())
            .when(archive(1, 4))
            .then([archived(CART, 1, 10, CAUSE)]);
        let mut after_first = given.to_vec();
        after_first.push(archived(CART, 1, 10, CAUSE));
        TestHarness::given(after_first)
            .when(archive(2, 4))
            .then([archived(CART, 2, 10, CAUSE)]);
    }
}
