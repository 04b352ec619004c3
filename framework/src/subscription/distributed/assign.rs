//! Which member runs which partition: partition `p` goes to the live member at index
//! `p % members`, the members in slot order. Every process computes it from the same list of
//! member leases, so no process decides for the others.

/// The member (its index among the live members, in slot order) that owns `partition`.
pub(crate) fn owner(partition: u32, members: usize) -> usize {
    assert!(members > 0, "a partition needs a member to own it");
    partition as usize % members
}

/// The partitions that the member at `index` among `members` live members owns, in order.
/// None when it is not among them.
pub(crate) fn owned(partitions: u32, members: usize, index: usize) -> Vec<u32> {
    if index >= members {
        return Vec::new();
    }
    (0..partitions)
        .filter(|&p| owner(p, members) == index)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How many partitions each member owns.
    fn shares(partitions: u32, members: usize) -> Vec<usize> {
        (0..members)
            .map(|i| owned(partitions, members, i).len())
            .collect()
    }

    #[test]
    fn partitions_go_round_robin_over_the_members_in_slot_order() {
        assert_eq!(owned(6, 1, 0), [0, 1, 2, 3, 4, 5]);
        assert_eq!(owned(6, 2, 0), [0, 2, 4]);
        assert_eq!(owned(6, 2, 1), [1, 3, 5]);
        assert_eq!(owned(6, 3, 0), [0, 3]);
        assert_eq!(owned(6, 3, 1), [1, 4]);
        assert_eq!(owned(6, 3, 2), [2, 5]);
        assert_eq!(owner(5, 4), 1);
    }

    #[test]
    fn the_shares_differ_by_at_most_one_and_members_beyond_the_partitions_get_none() {
        assert_eq!(shares(6, 1), [6]);
        assert_eq!(shares(6, 2), [3, 3]);
        assert_eq!(shares(6, 3), [2, 2, 2]);
        assert_eq!(shares(6, 4), [2, 2, 1, 1]);
        assert_eq!(shares(6, 8), [1, 1, 1, 1, 1, 1, 0, 0]);
        for partitions in 1..=64 {
            for members in 1..=70 {
                let s = shares(partitions, members);
                let (low, high) = (s.iter().min().unwrap(), s.iter().max().unwrap());
                assert!(high - low <= 1, "{partitions} over {members}: {s:?}");
                assert_eq!(s.iter().sum::<usize>(), partitions as usize);
            }
        }
    }

    #[test]
    fn every_partition_has_exactly_one_owner() {
        for partitions in 1..=64 {
            for members in 1..=70 {
                let mut seen = vec![0u32; partitions as usize];
                for index in 0..members {
                    for p in owned(partitions, members, index) {
                        seen[p as usize] += 1;
                    }
                }
                assert!(seen.iter().all(|&n| n == 1), "{partitions} over {members}");
            }
        }
    }

    #[test]
    fn the_same_members_give_the_same_assignment_and_an_outsider_owns_nothing() {
        // Stable: a function of (partitions, members, index) only, so every process that sees
        // the same member list computes the same owners, each time.
        for _ in 0..3 {
            assert_eq!(owned(6, 3, 1), [1, 4]);
        }
        assert!(owned(6, 3, 3).is_empty());
        assert!(owned(6, 0, 0).is_empty());
    }
}
