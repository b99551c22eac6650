package throttle

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// Shared is a store of counts that several instances use, so a guesser
// cannot spread its attempts over them.
type Shared interface {
	store
}

// DefaultKeyPrefix starts the keys of a Redis store.
const DefaultKeyPrefix = "popgate:login:v1:"

// Redis keeps the counts in redis: one string per key, INCRemented, with a
// TTL of the window from the first attempt and of the lockout from the
// attempt that reaches the limit, so redis forgets them by itself. One
// script checks the locks and counts the attempt atomically.
type Redis struct {
	c      redis.UniversalClient
	prefix string
}

// NewRedis returns a Shared store on c (the message memory's client) with
// keys under prefix ("" is DefaultKeyPrefix).
func NewRedis(c redis.UniversalClient, prefix string) *Redis {
	if prefix == "" {
		prefix = DefaultKeyPrefix
	}
	return &Redis{c: c, prefix: prefix}
}

// checkScript: KEYS are the counters' keys, ARGV their limits. It returns
// {i, pttl} when counter i is locked (its count reached its limit), else
// {0, failures, …}.
var checkScript = redis.NewScript(`
local out = {0}
for i = 1, #KEYS do
  local c = tonumber(redis.call('GET', KEYS[i]) or '0')
  if c >= tonumber(ARGV[i]) then
    return {i, redis.call('PTTL', KEYS[i])}
  end
  out[i+1] = c
end
return out
`)

// failScript: KEYS and ARGV as for checkScript, then the window and the
// lockout in milliseconds. It counts a failure on every counter not
// locked yet and returns the indexes of those it locked.
var failScript = redis.NewScript(`
local n = #KEYS
local locked = {}
for i = 1, n do
  local limit = tonumber(ARGV[i])
  if tonumber(redis.call('GET', KEYS[i]) or '0') < limit then
    local c = redis.call('INCR', KEYS[i])
    if c == 1 then redis.call('PEXPIRE', KEYS[i], ARGV[n+1]) end
    if c >= limit then
      redis.call('PEXPIRE', KEYS[i], ARGV[n+2])
      locked[#locked+1] = i
    end
  end
end
return locked
`)

func (r *Redis) keysAndLimits(cs []counter) ([]string, []any) {
	keys := make([]string, len(cs))
	args := make([]any, 0, len(cs)+2)
	for i, c := range cs {
		keys[i] = r.prefix + c.key
		args = append(args, c.limit)
	}
	return keys, args
}

func (r *Redis) check(ctx context.Context, cs []counter) (out outcome, err error) {
	defer recoverClient(&err)
	keys, args := r.keysAndLimits(cs)
	res, err := checkScript.Run(ctx, r.c, keys, args...).Int64Slice()
	if err != nil {
		return outcome{}, fmt.Errorf("redis: %w", err)
	}
	switch {
	case len(res) == 2 && res[0] >= 1 && int(res[0]) <= len(cs):
		retry := time.Duration(res[1]) * time.Millisecond
		if res[1] < 0 { // no TTL: cannot happen with these scripts alone
			retry = 0
		}
		return outcome{locked: int(res[0]) - 1, retry: retry}, nil
	case len(res) == len(cs)+1 && res[0] == 0:
		out := outcome{locked: -1, failed: make([]int, len(cs))}
		for i := range cs {
			out.failed[i] = int(res[i+1])
		}
		return out, nil
	}
	return outcome{}, fmt.Errorf("redis: unexpected reply %s to the login throttle's check", strconv.Quote(fmt.Sprint(res)))
}

func (r *Redis) fail(ctx context.Context, cs []counter, window, lockout time.Duration) (locked []int, err error) {
	defer recoverClient(&err)
	keys, args := r.keysAndLimits(cs)
	args = append(args, max(window.Milliseconds(), 1), max(lockout.Milliseconds(), 1))
	res, err := failScript.Run(ctx, r.c, keys, args...).Int64Slice()
	if err != nil {
		return nil, fmt.Errorf("redis: %w", err)
	}
	for _, i := range res {
		if i < 1 || int(i) > len(cs) {
			return nil, fmt.Errorf("redis: unexpected reply %s to the login throttle's count", strconv.Quote(fmt.Sprint(res)))
		}
		locked = append(locked, int(i)-1)
	}
	return locked, nil
}

// recoverClient turns a panic of the redis client on a reply it did not
// expect into an error.
func recoverClient(err *error) {
	if p := recover(); p != nil {
		*err = fmt.Errorf("redis: client panic: %v", p)
	}
}

func (r *Redis) reset(ctx context.Context, keys []string) error {
	full := make([]string, len(keys))
	for i, k := range keys {
		full[i] = r.prefix + k
	}
	if err := r.c.Del(ctx, full...).Err(); err != nil {
		return fmt.Errorf("redis: %w", err)
	}
	return nil
}
