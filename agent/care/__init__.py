"""Care at the edge (issue 11): what the box does for the patient before the network returns.

Pure modules (no I/O, importable anywhere):

* :mod:`agent.care.oximetry`: the overnight oximetry summary (valid time, mean/min SpO2, T90,
  T88, ODI3/ODI4, pulse), incremental and persistable;
* :mod:`agent.care.thresholds`: per-patient alarm thresholds, readings in, alarm decisions out;
* :mod:`agent.care.schedule`: measurement reminders from the service's schedule, quiet hours;
* :mod:`agent.care.i18n`: the patient-facing message catalogue (gettext: nb, nn, en, sma);
* :mod:`agent.care.gsm`: GSM 03.38 text for SMS.

I/O modules: :mod:`agent.care.modem` (the AT-command SMS sender, pyserial).

``docs/care.md`` describes the rules, their sources, the codes and the tests. Importing this
package loads nothing.
"""
