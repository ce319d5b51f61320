package daemon

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// A group record is the one fact about a StatefulSet's group that no member
// can learn from its own disk or from the pods: whether the group was ever
// formed. A member whose data directory is empty is either a member of a
// group being created (it must bootstrap and vote at once, or the group never
// forms) or a member that lost its data directory (its pod moved to another
// node: it must not vote with a log it forgot). The record tells them
// apart, and it fixes the bootstrap size once for every member (a scale
// during the creation cannot make two members bootstrap different
// memberships). It is a ConfigMap in smr-system (RecordNamespace), written
// by the daemons only:
//
//	group: shop.redis          the group key
//	statefulset: redis         the StatefulSet and its UID: a set deleted and
//	statefulset-uid: 1b2c...   re-created under the same name is a new group
//	members: "3"               the membership bootstrapped (1..3)
//	formed: "true"             a leader of the group committed an entry
//
// Deleting it by hand makes the next new member bootstrap again: only do
// that together with the group's data directories on every node.

// RecordNamespace holds the group records.
const RecordNamespace = "smr-system"

const (
	recGroup   = "group" // ConfigMap keys: [-._a-zA-Z0-9]+
	recSet     = "statefulset"
	recUID     = "statefulset-uid"
	recMembers = "members"
	recFormed  = "formed"
)

// groupRecord is the content of a group's record.
type groupRecord struct {
	Group, StatefulSet, UID string
	Members                 uint64
	Formed                  bool
}

// recordName is the ConfigMap name of a group's record: group keys may hold
// characters ConfigMap names may not (upper case, '_'), so a hash.
func recordName(groupKey string) string {
	sum := sha256.Sum256([]byte(groupKey))
	return "smr-group-" + hex.EncodeToString(sum[:10])
}

func (r groupRecord) data() map[string]string {
	return map[string]string{recGroup: r.Group, recSet: r.StatefulSet, recUID: r.UID,
		recMembers: strconv.FormatUint(r.Members, 10), recFormed: strconv.FormatBool(r.Formed)}
}

func parseRecord(cm *corev1.ConfigMap) (groupRecord, error) {
	d := cm.Data
	r := groupRecord{Group: d[recGroup], StatefulSet: d[recSet], UID: d[recUID]}
	var err error
	if r.Members, err = strconv.ParseUint(d[recMembers], 10, 64); err != nil || r.Members == 0 {
		return r, fmt.Errorf("group record %s/%s: %s=%q is not a member count", cm.Namespace, cm.Name, recMembers, d[recMembers])
	}
	if r.Formed, err = strconv.ParseBool(d[recFormed]); err != nil {
		return r, fmt.Errorf("group record %s/%s: %s=%q is not true or false", cm.Namespace, cm.Name, recFormed, d[recFormed])
	}
	if r.Group == "" || r.UID == "" {
		return r, fmt.Errorf("group record %s/%s: %s and %s must be set", cm.Namespace, cm.Name, recGroup, recUID)
	}
	return r, nil
}

// recordAttempts bounds the retries of a record write that lost a race
// with another daemon's.
const recordAttempts = 5

// ensureRecord returns the record of group key for StatefulSet sts: the
// stored one, or a new one (not formed, members = size) when there is none
// or it belongs to an earlier StatefulSet of that name (another UID). When
// several members create it at once one wins and all read its content.
func (d *Discovery) ensureRecord(ctx context.Context, key string, sts *appsv1.StatefulSet, size uint64) (groupRecord, error) {
	name := recordName(key)
	fresh := groupRecord{Group: key, StatefulSet: sts.Name, UID: string(sts.UID), Members: max(size, 1)}
	for range recordAttempts {
		cm, err := d.Client.GetConfigMap(ctx, RecordNamespace, name)
		if apierrors.IsNotFound(err) {
			cm = &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: RecordNamespace,
				Labels: map[string]string{"app.kubernetes.io/managed-by": "smr-cri"}}, Data: fresh.data()}
			cm.TypeMeta = metav1.TypeMeta{Kind: "ConfigMap", APIVersion: "v1"}
			if _, err := d.Client.CreateConfigMap(ctx, cm); apierrors.IsAlreadyExists(err) {
				continue
			} else if err != nil {
				return groupRecord{}, fmt.Errorf("group %s: create its record: %w", key, err)
			}
			d.logf("group record created", "group", key, "record", RecordNamespace+"/"+name, "members", fresh.Members)
			return fresh, nil
		}
		if err != nil {
			return groupRecord{}, fmt.Errorf("group %s: read its record: %w", key, err)
		}
		rec, err := parseRecord(cm)
		if err != nil {
			return groupRecord{}, fmt.Errorf("group %s: %w (delete it with the group's data directories to start the group again)", key, err)
		}
		if rec.UID == fresh.UID {
			return rec, nil
		}
		// A new StatefulSet under the old name: a new group.
		cm.Data = fresh.data()
		cm.TypeMeta = metav1.TypeMeta{Kind: "ConfigMap", APIVersion: "v1"}
		if _, err := d.Client.UpdateConfigMap(ctx, cm); apierrors.IsConflict(err) {
			continue
		} else if err != nil {
			return groupRecord{}, fmt.Errorf("group %s: reset its record for a new StatefulSet: %w", key, err)
		}
		d.logf("group record reset: the StatefulSet was re-created", "group", key, "old_uid", rec.UID, "uid", fresh.UID,
			"members", fresh.Members)
		return fresh, nil
	}
	return groupRecord{}, fmt.Errorf("group %s: its record kept changing under %d attempts", key, recordAttempts)
}

// markFormed records that group key (of the StatefulSet with uid) has
// formed. A record of another StatefulSet is left alone.
func (d *Discovery) markFormed(ctx context.Context, key, uid string) error {
	name := recordName(key)
	for range recordAttempts {
		cm, err := d.Client.GetConfigMap(ctx, RecordNamespace, name)
		if err != nil {
			return fmt.Errorf("group %s: read its record: %w", key, err)
		}
		rec, err := parseRecord(cm)
		if err != nil {
			return fmt.Errorf("group %s: %w", key, err)
		}
		if rec.UID != uid || rec.Formed {
			return nil
		}
		rec.Formed = true
		cm.Data = rec.data()
		cm.TypeMeta = metav1.TypeMeta{Kind: "ConfigMap", APIVersion: "v1"}
		if _, err := d.Client.UpdateConfigMap(ctx, cm); apierrors.IsConflict(err) {
			continue
		} else if err != nil {
			return fmt.Errorf("group %s: mark its record formed: %w", key, err)
		}
		return nil
	}
	return errors.New("group " + key + ": its record kept changing")
}

func (d *Discovery) logf(msg string, args ...any) {
	if d.Log != nil {
		d.Log.Info(msg, args...)
	}
}
