"""Agent backends behind one small async interface, and the CallSession that drives them."""
