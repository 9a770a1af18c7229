package reclaim

import "time"

// staleAfter is how long past its deadline unfinished work is still resumed
// by a restarted agent: long enough for an agent that crashed to come back
// before a Spot node goes, far shorter than a reboot for maintenance.
const staleAfter = 10 * time.Minute

// maxPruneInterval bounds how long a finished job's file outlives its
// retention while the agent runs; the directory holds few files, so
// reading it hourly costs nothing.
const maxPruneInterval = time.Hour

// prune removes the files of finished work past its retention (expire).
// It holds f.mu so that a job start begins meanwhile cannot have its file
// removed from under it: start reads the file and marks the job running
// under the same lock.
func (f *Flow) prune(now time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	// A save cut short by a crash of the agent that restarted within
	// staleTemp of it is only found now.
	for _, err := range f.state.removeStaleTemps(now) {
		f.log.Error(err, "cannot remove a temporary file left in the reclaim state directory")
	}
	jobs, errs := f.state.all()
	for _, err := range errs {
		// Run logged it as an error at start; once an hour again would be
		// noise.
		f.log.V(1).Info("unreadable reclaim state; left in place", "error", err.Error())
	}
	for _, j := range jobs {
		if !f.running[j.ID] {
			f.expire(j, now)
		}
	}
}

// expire removes a job's file once it has served its purpose, at start and
// while the agent runs. Unfinished work is kept to be finished; finished
// work is kept for the retention after its last step, so that a restarted
// agent that sees the same notice again knows it as handled, and a
// finished command until its deadline, so that a restarted agent can send
// its statuses again (the scheduler waits for them until then).
func (f *Flow) expire(j *Job, now time.Time) {
	if !j.Done || (j.Command != nil && now.Before(j.Deadline)) || now.Sub(j.Updated) <= f.retention {
		return
	}
	if err := f.state.remove(j.ID); err != nil {
		f.log.Error(err, "cannot remove old reclaim state", "job", j.ID)
		return
	}
	f.log.V(1).Info("removed the state of reclaim work finished longer ago than the retention", "job", j.ID, "updated", j.Updated, "retention", f.retention)
}
