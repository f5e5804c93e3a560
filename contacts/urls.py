from django.urls import path

from contacts import views

app_name = "contacts"
urlpatterns = [
    path("", views.contact_list, name="list"),
    path("<int:pk>/", views.contact_detail, name="detail"),
    path("<int:pk>/tags/add/", views.contact_tag_add, name="tag_add"),
    path("<int:pk>/tags/<int:tag_id>/remove/", views.contact_tag_remove, name="tag_remove"),
]
