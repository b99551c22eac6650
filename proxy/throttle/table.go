package throttle

import (
	"container/list"
	"context"
	"sync"
	"time"
)

// evictScan is how many of the least recently used keys a full table looks
// at for one that is not locked.
const evictScan = 16

// table is the local store: at most capacity keys, least recently used
// first out. A full table forgets an unlocked key among the evictScan
// oldest before a locked one, so that flushing a lock out of it takes a
// guesser capacity fresh keys (each one a failed login the server saw)
// within the lockout, and more when the old keys are locks too.
type table struct {
	mu       sync.Mutex
	capacity int
	now      func() time.Time
	keys     map[string]*list.Element
	lru      list.List // of *entry, most recently used first
}

type entry struct {
	key     string
	count   int
	expires time.Time
	locked  bool // the count reached a limit: expires is the lock's end
}

func newTable(capacity int, now func() time.Time) *table {
	return &table{capacity: capacity, now: now, keys: map[string]*list.Element{}}
}

// get returns key's live entry, or nil; an expired one is removed.
func (t *table) get(key string, now time.Time) *entry {
	el := t.keys[key]
	if el == nil {
		return nil
	}
	e := el.Value.(*entry)
	if !now.Before(e.expires) {
		t.lru.Remove(el)
		delete(t.keys, key)
		return nil
	}
	t.lru.MoveToFront(el)
	return e
}

func (t *table) check(_ context.Context, cs []counter) (outcome, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	out := outcome{locked: -1, failed: make([]int, len(cs))}
	for i, c := range cs {
		e := t.get(c.key, now)
		if e == nil {
			continue
		}
		if e.locked {
			return outcome{locked: i, retry: e.expires.Sub(now)}, nil
		}
		out.failed[i] = e.count
	}
	return out, nil
}

func (t *table) fail(_ context.Context, cs []counter, window, lockout time.Duration) ([]int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	var locked []int
	for i, c := range cs {
		e := t.get(c.key, now)
		if e == nil {
			e = &entry{key: c.key, expires: now.Add(window)}
			t.insert(e)
		}
		if e.locked {
			continue // a failure in flight when the lock came: no longer lock
		}
		if e.count++; e.count >= c.limit {
			e.locked = true
			e.expires = now.Add(lockout)
			locked = append(locked, i)
		}
	}
	return locked, nil
}

func (t *table) insert(e *entry) {
	if len(t.keys) >= t.capacity {
		t.evict()
	}
	t.keys[e.key] = t.lru.PushFront(e)
}

// evict forgets the least recently used key that is not locked among the
// evictScan oldest, or the oldest when they are all locked.
func (t *table) evict() {
	victim := t.lru.Back()
	el := victim
	for range evictScan {
		if el == nil {
			break
		}
		if !el.Value.(*entry).locked {
			victim = el
			break
		}
		el = el.Prev()
	}
	if victim != nil {
		t.lru.Remove(victim)
		delete(t.keys, victim.Value.(*entry).key)
	}
}

func (t *table) reset(_ context.Context, keys []string) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, k := range keys {
		if el := t.keys[k]; el != nil {
			t.lru.Remove(el)
			delete(t.keys, k)
		}
	}
	return nil
}
