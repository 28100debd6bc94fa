"""Warning levels, the alert path from a site's level change to the people who must act."""
