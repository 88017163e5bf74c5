package hold

// ReadyCache says whether the sweeper has proven that a ServiceAccount's credentials work.
// Admission reads it to let a proven ServiceAccount's next Jobs start without a hold; the
// sweeper's implementation (sweeper.ReadyCache) binds each entry to the identity it proved.
type ReadyCache interface {
	Ready(namespace, name string) bool
}
