# Sourced by the scripts: pip with the local index's noise filtered out and
# its own exit status kept.
quiet_pip() {
  local python=$1 out status=0
  shift
  out=$("$python" -m pip --disable-pip-version-check -q "$@" 2>&1) || status=$?
  printf '%s\n' "$out" | grep -v -e "^WARNING: Location" -e '^$' || true
  return $status
}
