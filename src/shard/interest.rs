//! Redis Cluster only: the channels this shard has local subscribers for, reported to the
//! cluster thread on the first subscriber and the last (see `cluster::interest`).
//!
//! A connection whose channel has no subscriber on this shard yet waits, before its 101,
//! until the cluster thread says the node's SSUBSCRIBE is in effect: so nothing published
//! after a client got its 101 can pass this node by. Connections arriving while that
//! answer is pending wait for the same answer (one report per channel and shard). The
//! shard keeps history only for channels in this table (the node may have been
//! unsubscribed from others, so their history could have holes), and drops a channel's
//! history when its last subscriber leaves.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::task::{Poll, Waker};

use crate::channel::{ChannelMap, ChannelName};
use crate::cluster::ClusterHandle;

/// The cluster thread's answer to one report, awaited by any number of connections.
#[derive(Default)]
struct Answer {
    value: Cell<Option<bool>>,
    wakers: RefCell<Vec<Waker>>,
}

impl Answer {
    fn set(&self, v: bool) {
        self.value.set(Some(v));
        for w in self.wakers.borrow_mut().drain(..) {
            w.wake();
        }
    }

    async fn wait(&self) -> bool {
        std::future::poll_fn(|cx| match self.value.get() {
            Some(v) => Poll::Ready(v),
            None => {
                self.wakers.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}

struct Local {
    conns: usize,
    answer: Rc<Answer>,
}

/// Per shard: channel → connections (joined or joining) and the node's answer.
#[derive(Default)]
pub struct LocalInterest {
    channels: RefCell<ChannelMap<Local>>,
}

impl LocalInterest {
    pub fn contains(&self, channel: &ChannelName) -> bool {
        self.channels.borrow().contains_key(channel)
    }

    /// Counts a connection in on `channels` (the broadcast channel is always subscribed)
    /// and waits until the node is subscribed to each. False if Redis could not be reached:
    /// the caller then calls [`Self::leave`] with the same channels.
    pub async fn join(&self, shard: usize, cluster: &ClusterHandle, channels: &[ChannelName]) -> bool {
        let mut answers = Vec::new();
        for ch in channels.iter().filter(|c| !c.is_broadcast()) {
            let mut map = self.channels.borrow_mut();
            let local = map.entry(ch.clone()).or_insert_with(|| {
                let answer = Rc::new(Answer::default());
                let (a, rx) = (answer.clone(), cluster.want(shard, ch.clone()));
                monoio::spawn(async move { a.set(rx.await.unwrap_or(false)) });
                Local { conns: 0, answer }
            });
            local.conns += 1;
            answers.push(local.answer.clone());
        }
        let mut ok = true;
        for a in answers {
            ok &= a.wait().await;
        }
        ok
    }

    /// Counts a connection out; returns the channels that have no connection left here
    /// (reported to the cluster thread already).
    pub fn leave<'a>(
        &self,
        shard: usize,
        cluster: &ClusterHandle,
        channels: impl Iterator<Item = &'a ChannelName>,
    ) -> Vec<ChannelName> {
        let mut gone = Vec::new();
        let mut map = self.channels.borrow_mut();
        for ch in channels.filter(|c| !c.is_broadcast()) {
            let Some(local) = map.get_mut(ch) else { continue };
            local.conns -= 1;
            if local.conns == 0 {
                map.remove(ch);
                cluster.unwant(shard, ch.clone());
                gone.push(ch.clone());
            }
        }
        gone
    }

    pub fn len(&self) -> usize {
        self.channels.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.channels.borrow().is_empty()
    }
}
